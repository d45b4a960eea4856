//! The asynchronous invocation queue and dead-letter queue (issue 4), as
//! plain data plus the pure rules that move an event along: what happens
//! after each attempt is decided by [`next_step`], a function of the event,
//! the outcome, the function's settings and the clock, so the exact retry
//! schedule is tested without a cluster. The registry (`state.rs`) applies
//! the resulting commands; `events/dispatcher.rs` runs the attempts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

/// Bound of each function's dead-letter queue: the oldest record goes
/// (counted) when a new one arrives at the bound.
pub const DLQ_BOUND: usize = 10_000;
/// Payload bytes of each function's dead-letter queue (the records live in
/// every controller's memory and snapshots); the oldest go beyond it.
pub const DLQ_BYTES: usize = 64 << 20;
/// Longest error message kept in a dead-letter record.
pub const ERROR_MESSAGE_BOUND: usize = 1024;
/// Longest error type kept (a function names it; Lambda's are short).
pub const ERROR_TYPE_BOUND: usize = 256;
/// Destination hops one event may start, like Lambda's recursive-loop
/// detection (which stops after about 16 invocations in a chain): an
/// event accepted from a client has depth 0, the destination record of an
/// event of depth d has d + 1, and a record that would reach this depth
/// is not sent on (see [`stop_recursion`]). So a cycle of destinations
/// (A -> B -> A, or A -> A) runs at most this many times per event.
pub const MAX_DESTINATION_DEPTH: u32 = 16;
/// Backoff of throttled / system-error attempts: 1 s doubling to 5 min.
pub const SYSTEM_BACKOFF_START_MS: u64 = 1_000;
pub const SYSTEM_BACKOFF_MAX_MS: u64 = 300_000;

/// An accepted asynchronous invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncEvent {
    /// Kept across retries and redrives; the handler sees it as its
    /// request id.
    pub request_id: String,
    pub function: String,
    pub qualifier: String,
    /// The JSON event.
    pub payload: String,
    pub enqueued_ms: u64,
    /// Not attempted before this time.
    pub due_ms: u64,
    /// Attempts that ended in a function error or timeout.
    pub attempts: u32,
    /// Throttled / system-error attempts in a row (for the backoff).
    pub system_failures: u32,
    pub first_attempt_ms: u64,
    pub last_attempt_ms: u64,
    pub last_error_type: String,
    pub last_error_message: String,
    /// Destination hops that led to this event (0 for a client's event):
    /// replicated with it, never in the payload, so a function cannot
    /// reset it.
    #[serde(default)]
    pub depth: u32,
    /// Events of one function with the same non-empty ordering key run
    /// one at a time, in `seq` order (see [`Queues::ordered`]); empty for
    /// an unordered event.
    #[serde(default)]
    pub ordering_key: String,
    /// Submission order: given by [`Queues::enqueue`] when the enqueue is
    /// applied (so it is the commit order, the same on every replica),
    /// kept across retries; a redrive gives a new one.
    #[serde(default)]
    pub seq: u64,
}

impl AsyncEvent {
    /// A new event, due at once, never attempted.
    pub fn new(
        request_id: String,
        function: String,
        qualifier: String,
        payload: String,
        now_ms: u64,
    ) -> AsyncEvent {
        AsyncEvent {
            request_id,
            function,
            qualifier,
            payload,
            enqueued_ms: now_ms,
            due_ms: now_ms,
            attempts: 0,
            system_failures: 0,
            first_attempt_ms: 0,
            last_attempt_ms: 0,
            last_error_type: String::new(),
            last_error_message: String::new(),
            depth: 0,
            ordering_key: String::new(),
            seq: 0,
        }
    }
}

/// Why an event went to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    RetriesExhausted,
    EventAgeExceeded,
    /// A destination record stopped at [`MAX_DESTINATION_DEPTH`]: never
    /// attempted, kept in its target's dead-letter queue.
    RecursiveLoop,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
            Condition::RecursiveLoop => "RecursiveLoop",
        }
    }
}

/// A dead-letter record: the original event and how it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub request_id: String,
    pub function: String,
    pub qualifier: String,
    pub payload: String,
    pub condition: Condition,
    pub attempts: u32,
    pub error_type: String,
    /// At most [`ERROR_MESSAGE_BOUND`] bytes.
    pub error_message: String,
    pub first_attempt_ms: u64,
    pub last_attempt_ms: u64,
    pub enqueued_ms: u64,
    pub dead_lettered_ms: u64,
    /// The event's destination depth, kept so a redrive does not restart
    /// a loop's count.
    #[serde(default)]
    pub depth: u32,
    /// The event's ordering key: a redrive puts the event back in its
    /// key's lane (see [`Queues::redrive`]).
    #[serde(default)]
    pub ordering_key: String,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Success,
    /// The function failed or timed out: counts against the retries.
    FunctionError {
        error_type: String,
        message: String,
    },
    /// Throttled, no worker, worker died: does not count; backs off.
    SystemError {
        error_type: String,
        message: String,
    },
}

/// The function's async settings at the time of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub maximum_retry_attempts: u32,
    pub maximum_event_age_ms: u64,
    /// Lambda waits 1 minute, then 2 (w, then 2w); configurable so tests
    /// take seconds.
    pub base_wait_ms: u64,
}

/// What to do with the event after an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Done,
    /// Try again at `event.due_ms` (the updated event).
    Retry(AsyncEvent),
    DeadLetter(DeadLetter),
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn dead(ev: AsyncEvent, condition: Condition, now_ms: u64) -> DeadLetter {
    DeadLetter {
        request_id: ev.request_id,
        function: ev.function,
        qualifier: ev.qualifier,
        payload: ev.payload,
        condition,
        attempts: ev.attempts,
        error_type: truncate(&ev.last_error_type, ERROR_TYPE_BOUND),
        error_message: truncate(&ev.last_error_message, ERROR_MESSAGE_BOUND),
        first_attempt_ms: ev.first_attempt_ms,
        last_attempt_ms: ev.last_attempt_ms,
        enqueued_ms: ev.enqueued_ms,
        dead_lettered_ms: now_ms,
        depth: ev.depth,
        ordering_key: ev.ordering_key,
    }
}

/// The dead letter of a destination record that reached
/// [`MAX_DESTINATION_DEPTH`] (sent by `from`): it goes to its target's
/// dead-letter queue unattempted, and no destination fires for it, so
/// the loop ends there.
pub fn stop_recursion(record: AsyncEvent, from: &str, now_ms: u64) -> DeadLetter {
    let message = format!(
        "recursive loop stopped: this event would be the {}th invocation of one chain of destinations (last hop {from} -> {}); at most {MAX_DESTINATION_DEPTH} are run",
        record.depth + 1,
        record.function
    );
    let mut ev = record;
    ev.last_error_type = "RecursiveInvocationException".into();
    ev.last_error_message = message;
    dead(ev, Condition::RecursiveLoop, now_ms)
}

/// Lambda's rules for the attempt made at `now_ms`:
/// - success: done;
/// - function error: retried after w, then 2w (attempt n waits n*w after
///   the previous one), up to `maximum_retry_attempts` retries; then
///   `RetriesExhausted`;
/// - system error: retried with backoff from 1 s doubling to 5 min,
///   without counting an attempt;
/// - whenever the next try would come after the event's maximum age:
///   `EventAgeExceeded`.
pub fn next_step(mut ev: AsyncEvent, outcome: Attempt, p: Policy, now_ms: u64) -> Step {
    if ev.first_attempt_ms == 0 {
        ev.first_attempt_ms = now_ms;
    }
    ev.last_attempt_ms = now_ms;
    let expires = ev.enqueued_ms.saturating_add(p.maximum_event_age_ms);
    match outcome {
        Attempt::Success => Step::Done,
        Attempt::FunctionError {
            error_type,
            message,
        } => {
            ev.attempts += 1;
            ev.system_failures = 0;
            ev.last_error_type = error_type;
            ev.last_error_message = message;
            if ev.attempts > p.maximum_retry_attempts {
                return Step::DeadLetter(dead(ev, Condition::RetriesExhausted, now_ms));
            }
            let due = now_ms + p.base_wait_ms * ev.attempts as u64;
            if due > expires {
                return Step::DeadLetter(dead(ev, Condition::EventAgeExceeded, now_ms));
            }
            ev.due_ms = due;
            Step::Retry(ev)
        }
        Attempt::SystemError {
            error_type,
            message,
        } => {
            let backoff = SYSTEM_BACKOFF_START_MS
                .saturating_mul(1u64 << ev.system_failures.min(20))
                .min(SYSTEM_BACKOFF_MAX_MS);
            ev.system_failures += 1;
            ev.last_error_type = error_type;
            ev.last_error_message = message;
            let due = now_ms + backoff;
            if due > expires {
                return Step::DeadLetter(dead(ev, Condition::EventAgeExceeded, now_ms));
            }
            ev.due_ms = due;
            Step::Retry(ev)
        }
    }
}

/// The queue and dead-letter queue inside the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Queues {
    /// Pending events by request id.
    pub events: BTreeMap<String, AsyncEvent>,
    /// Per function, (due time, request id): the dispatch order. Kept per
    /// function so a pass can step over a function that has no room
    /// without walking its backlog. Holds every unordered event and the
    /// head of each ordering lane, never an event waiting in a lane.
    pub due: BTreeMap<String, BTreeSet<(u64, String)>>,
    /// Ordering lanes by "function/ordering key" (function names have no
    /// '/'): seq -> request id of the key's queued events. Only the first
    /// (the head) is in `due`; when it leaves the queue (done, dead-
    /// lettered, expired) the next one enters `due`, and a retry of the
    /// head reschedules it in place, so a lane costs a dispatcher pass one
    /// look however long it is.
    #[serde(default)]
    pub ordered: BTreeMap<String, BTreeMap<u64, String>>,
    /// The last `seq` given (submission order of the events).
    #[serde(default)]
    pub next_seq: u64,
    /// Dead letters per function, oldest first.
    pub dlq: BTreeMap<String, VecDeque<DeadLetter>>,
    /// Records dropped from a full dead-letter queue, per function.
    pub dlq_dropped: BTreeMap<String, u64>,
    /// Client idempotency keys within their window, by "function/key"
    /// (function names have no '/').
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
    /// (expiry, "function/key"): the order in which keys leave the window.
    #[serde(default)]
    pub key_expiry: BTreeSet<(u64, String)>,
    /// Payload bytes of the pending events (the API refuses new events
    /// past `max_async_queue_bytes`).
    #[serde(default)]
    pub bytes: u64,
}

/// An idempotency key's first event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub request_id: String,
    pub expires_ms: u64,
}

/// Most idempotency keys kept (each up to ~400 bytes in every controller's
/// state); past it the soonest-expiring go early.
pub const MAX_KEYS: usize = 100_000;

/// An event's ordering lane ("function/key"), or None when unordered.
fn lane_of(ev: &AsyncEvent) -> Option<String> {
    (!ev.ordering_key.is_empty()).then(|| format!("{}/{}", ev.function, ev.ordering_key))
}

impl Queues {
    /// Adds an event with the next `seq` (its submission order); an event
    /// with the same request id is kept as is (a retried enqueue is
    /// applied once). An event with an ordering key joins the tail of its
    /// key's lane and is due only once it is the lane's head.
    pub fn enqueue(&mut self, mut ev: AsyncEvent) -> bool {
        if self.events.contains_key(&ev.request_id) {
            return false;
        }
        // Given here, not taken from the command: the log's order is the
        // submission order, on every replica.
        self.next_seq += 1;
        ev.seq = self.next_seq;
        let head = match lane_of(&ev) {
            None => true,
            Some(lane) => {
                let lane = self.ordered.entry(lane).or_default();
                lane.insert(ev.seq, ev.request_id.clone());
                lane.len() == 1
            }
        };
        if head {
            self.schedule(&ev);
        }
        self.bytes += ev.payload.len() as u64;
        self.events.insert(ev.request_id.clone(), ev);
        true
    }

    fn schedule(&mut self, ev: &AsyncEvent) {
        self.due
            .entry(ev.function.clone())
            .or_default()
            .insert((ev.due_ms, ev.request_id.clone()));
    }

    fn unschedule(&mut self, ev: &AsyncEvent) {
        if let Some(set) = self.due.get_mut(&ev.function) {
            set.remove(&(ev.due_ms, ev.request_id.clone()));
            if set.is_empty() {
                self.due.remove(&ev.function);
            }
        }
    }

    /// Whether `ev` is dispatchable when due: unordered, or the head of
    /// its lane (the others wait for it).
    pub fn is_head(&self, ev: &AsyncEvent) -> bool {
        match lane_of(ev) {
            None => true,
            Some(lane) => self
                .ordered
                .get(&lane)
                .and_then(|l| l.first_key_value())
                .is_some_and(|(seq, _)| *seq == ev.seq),
        }
    }

    /// Enqueues `ev` unless its function saw `key` within the window (the
    /// key's record expires at `expires_ms`); keys whose window ended by
    /// the event's acceptance time go first. Returns the request id the
    /// key names (the first event's on a duplicate) and whether `ev` was
    /// enqueued.
    pub fn enqueue_keyed(&mut self, ev: AsyncEvent, key: &str, expires_ms: u64) -> (String, bool) {
        let now = ev.enqueued_ms;
        while let Some((t, _)) = self.key_expiry.first() {
            if *t > now && self.keys.len() < MAX_KEYS {
                break;
            }
            if let Some((_, k)) = self.key_expiry.pop_first() {
                self.keys.remove(&k);
            }
        }
        let k = format!("{}/{key}", ev.function);
        if let Some(r) = self.keys.get(&k) {
            return (r.request_id.clone(), false);
        }
        self.key_expiry.insert((expires_ms, k.clone()));
        self.keys.insert(
            k,
            KeyRecord {
                request_id: ev.request_id.clone(),
                expires_ms,
            },
        );
        let id = ev.request_id.clone();
        let fresh = self.enqueue(ev);
        (id, fresh)
    }

    /// Takes an event out of the queue for good; the next event of its
    /// lane, if it was the head, becomes due (at its own due time, long
    /// past for an event that waited).
    fn remove(&mut self, request_id: &str) -> Option<AsyncEvent> {
        let ev = self.events.remove(request_id)?;
        self.bytes = self.bytes.saturating_sub(ev.payload.len() as u64);
        self.unschedule(&ev);
        if let Some(key) = lane_of(&ev) {
            if let Some(lane) = self.ordered.get_mut(&key) {
                let was_head = lane.first_key_value().is_some_and(|(s, _)| *s == ev.seq);
                lane.remove(&ev.seq);
                let next = if was_head {
                    lane.first_key_value().map(|(_, id)| id.clone())
                } else {
                    None
                };
                if lane.is_empty() {
                    self.ordered.remove(&key);
                }
                if let Some(next) = next.and_then(|id| self.events.get(&id).cloned()) {
                    self.schedule(&next);
                }
            }
        }
        Some(ev)
    }

    /// Replaces a queued event by its retry, in place: same request id,
    /// function, ordering key and seq (a step cannot move an event), a new
    /// due time if it is dispatchable. The head of a lane stays its head,
    /// so the key's later events keep waiting.
    fn reschedule(&mut self, request_id: &str, mut next: AsyncEvent) {
        let Some(old) = self.events.get(request_id).cloned() else {
            return;
        };
        next.request_id = old.request_id.clone();
        next.function = old.function.clone();
        next.ordering_key = old.ordering_key.clone();
        next.seq = old.seq;
        let dispatchable = self.is_head(&old);
        if dispatchable {
            self.unschedule(&old);
            self.schedule(&next);
        }
        self.bytes =
            self.bytes.saturating_sub(old.payload.len() as u64) + next.payload.len() as u64;
        self.events.insert(next.request_id.clone(), next);
    }

    /// Applies the step decided for an attempt. Unknown ids (already
    /// finished by a previous dispatcher: at-least-once) change nothing.
    pub fn apply_step(&mut self, request_id: &str, step: Step) -> bool {
        if !self.events.contains_key(request_id) {
            return false;
        }
        match step {
            Step::Done => {
                self.remove(request_id);
            }
            Step::Retry(ev) => self.reschedule(request_id, ev),
            Step::DeadLetter(d) => {
                self.remove(request_id);
                self.dead_letter(d);
            }
        }
        true
    }

    /// Appends a dead letter, dropping (and counting) the oldest at the bound.
    pub fn dead_letter(&mut self, d: DeadLetter) {
        let function = d.function.clone();
        let q = self.dlq.entry(function.clone()).or_default();
        q.push_back(d);
        let mut bytes: usize = q.iter().map(|d| d.payload.len()).sum();
        while q.len() > DLQ_BOUND || (bytes > DLQ_BYTES && q.len() > 1) {
            let Some(old) = q.pop_front() else { break };
            bytes -= old.payload.len();
            let dropped = self.dlq_dropped.entry(function.clone()).or_default();
            *dropped += 1;
            tracing::warn!(
                function = %function,
                dropped_request_id = %old.request_id,
                dropped_total = *dropped,
                "dead-letter queue full ({DLQ_BOUND} records or {} MB): dropped the oldest record",
                DLQ_BYTES >> 20
            );
        }
    }

    /// Puts dead letters of `function` back on the queue with a fresh
    /// attempt count (all of them, or those in `ids`); returns how many.
    /// Unknown ids are an error naming them, and nothing moves.
    ///
    /// A dead letter with an ordering key goes back with its key, at the
    /// tail of the key's lane (a new `seq`): its turn in the order is
    /// past, but its key still means "never at the same time as the key's
    /// other events", which a handler may rely on (one entity, one
    /// partition), so it does not run beside them.
    pub fn redrive(
        &mut self,
        function: &str,
        ids: Option<&[String]>,
        now_ms: u64,
    ) -> Result<usize, String> {
        let Some(q) = self.dlq.get_mut(function) else {
            return match ids {
                Some(ids) if !ids.is_empty() => Err(format!(
                    "no dead letter {} for function {function}",
                    ids.join(", ")
                )),
                _ => Ok(0),
            };
        };
        if let Some(ids) = ids {
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !q.iter().any(|d| &d.request_id == *id))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "no dead letter {} for function {function}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let (moving, staying): (Vec<DeadLetter>, Vec<DeadLetter>) = q
            .drain(..)
            .partition(|d| ids.is_none_or(|ids| ids.contains(&d.request_id)));
        q.extend(staying);
        let n = moving.len();
        for d in moving {
            let (depth, key) = (d.depth, d.ordering_key);
            let mut ev = AsyncEvent::new(d.request_id, d.function, d.qualifier, d.payload, now_ms);
            ev.depth = depth;
            ev.ordering_key = key;
            self.enqueue(ev);
        }
        Ok(n)
    }

    pub fn purge(&mut self, function: &str) -> usize {
        self.dlq.remove(function).map(|q| q.len()).unwrap_or(0)
    }

    /// Events due at or before `now_ms`, earliest first, at most `max`.
    pub fn due_now(&self, now_ms: u64, max: usize) -> Vec<&AsyncEvent> {
        let mut due: Vec<&(u64, String)> = self
            .due
            .values()
            .flat_map(|set| set.iter().take_while(|(t, _)| *t <= now_ms).take(max))
            .collect();
        due.sort();
        due.into_iter()
            .take(max)
            .filter_map(|(_, id)| self.events.get(id))
            .collect()
    }

    /// One pass of the dispatcher over the due events, earliest first
    /// across functions: skips those `busy` (attempt in flight), asks
    /// `admit` about each other one, and stops after `want` runnable
    /// events or `max_scan` events looked at. A function with no room is
    /// left at its first held event (its older events are only checked
    /// for age), so a throttled backlog costs a pass nothing and cannot
    /// starve other functions. Only the head of an ordering lane is in
    /// `due`, so a key's backlog costs a pass one look (none while its
    /// head is in flight or waits for a retry).
    pub fn plan(
        &self,
        now_ms: u64,
        want: usize,
        max_scan: usize,
        busy: impl Fn(&str) -> bool,
        mut admit: impl FnMut(&AsyncEvent) -> Admit,
    ) -> Plan {
        use std::cmp::Reverse;
        let mut plan = Plan::default();
        let mut lanes: Vec<_> = self
            .due
            .values()
            .map(|set| set.iter().take_while(move |(t, _)| *t <= now_ms))
            .collect();
        let mut heads = std::collections::BinaryHeap::new();
        for (i, lane) in lanes.iter_mut().enumerate() {
            if let Some((t, id)) = lane.next() {
                heads.push(Reverse((*t, id, i)));
            }
        }
        while let Some(Reverse((_, id, i))) = heads.pop() {
            if plan.run.len() >= want || plan.scanned >= max_scan {
                break;
            }
            plan.scanned += 1;
            let ev = match self.events.get(id) {
                Some(ev) if !busy(id) => ev,
                _ => {
                    if let Some((t, id)) = lanes[i].next() {
                        heads.push(Reverse((*t, id, i)));
                    }
                    continue;
                }
            };
            match admit(ev) {
                Admit::Run { reserved } => {
                    plan.run.push((ev.clone(), reserved));
                    if let Some((t, id)) = lanes[i].next() {
                        heads.push(Reverse((*t, id, i)));
                    }
                }
                Admit::Hold {
                    maximum_event_age_ms,
                } => {
                    // This function's lane stops here for this pass.
                    plan.held_functions += 1;
                    let mut next = Some(ev);
                    while let Some(ev) = next {
                        if plan.expired.len() >= want.max(1)
                            || !past_age(ev, maximum_event_age_ms, now_ms)
                        {
                            break;
                        }
                        if !busy(&ev.request_id) {
                            plan.expired.push(ev.clone());
                        }
                        next = lanes[i].next().and_then(|(_, id)| self.events.get(id));
                    }
                }
            }
        }
        plan
    }
}

/// The dispatcher's decision about one due event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Attempt it now; `reserved` when a reserved-concurrency slot was
    /// taken for it.
    Run { reserved: bool },
    /// Its function has no room: leave it (and the function's later
    /// events) queued, with no attempt and no write; events past the
    /// function's maximum age expire (`EventAgeExceeded`).
    Hold { maximum_event_age_ms: u64 },
}

/// The outcome of [`Queues::plan`].
#[derive(Debug, Default)]
pub struct Plan {
    pub run: Vec<(AsyncEvent, bool)>,
    pub expired: Vec<AsyncEvent>,
    /// Functions held back for lack of room.
    pub held_functions: usize,
    /// Due events looked at.
    pub scanned: usize,
}

/// Whether an event held back since `ev.enqueued_ms` is past its maximum
/// age at `now_ms`.
pub fn past_age(ev: &AsyncEvent, maximum_event_age_ms: u64, now_ms: u64) -> bool {
    now_ms >= ev.enqueued_ms.saturating_add(maximum_event_age_ms)
}

/// The dead letter of an event that waited for room (throttled) until its
/// maximum age: `EventAgeExceeded`, its attempts so far, the throttle as
/// the last error unless a function error came before it.
pub fn expire_throttled(mut ev: AsyncEvent, reason: &str, now_ms: u64) -> DeadLetter {
    if ev.last_error_type.is_empty() {
        ev.last_error_type = "Throttled".into();
        ev.last_error_message = reason.to_string();
    }
    dead(ev, Condition::EventAgeExceeded, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1_000;

    fn event(id: &str, t: u64) -> AsyncEvent {
        AsyncEvent::new(
            id.into(),
            "f".into(),
            "$LATEST".into(),
            "{\"k\":1}".into(),
            t,
        )
    }

    fn policy(retries: u32) -> Policy {
        Policy {
            maximum_retry_attempts: retries,
            maximum_event_age_ms: 21_600_000,
            base_wait_ms: W,
        }
    }

    fn fail() -> Attempt {
        Attempt::FunctionError {
            error_type: "ValueError".into(),
            message: "boom".into(),
        }
    }

    /// A function that always fails is attempted exactly 1 + retries times,
    /// at t, t+w, t+3w, then one dead letter with the right fields; with
    /// 0 and 1 retries likewise.
    #[test]
    fn retry_schedule_is_lambdas() {
        for retries in 0..=2u32 {
            let t = 10_000;
            let mut ev = event("r", t);
            let mut attempts_at = Vec::new();
            let mut now = t;
            let dl = loop {
                attempts_at.push(now);
                match next_step(ev, fail(), policy(retries), now) {
                    Step::Retry(next) => {
                        now = next.due_ms;
                        ev = next;
                    }
                    Step::DeadLetter(d) => break d,
                    Step::Done => panic!("a failing function is never done"),
                }
            };
            let want: Vec<u64> = [t, t + W, t + 3 * W][..=retries as usize].to_vec();
            assert_eq!(attempts_at, want, "retries={retries}");
            assert_eq!(dl.condition, Condition::RetriesExhausted);
            assert_eq!(dl.attempts, retries + 1);
            assert_eq!(dl.request_id, "r");
            assert_eq!(dl.payload, "{\"k\":1}");
            assert_eq!(dl.error_type, "ValueError");
            assert_eq!(dl.error_message, "boom");
            assert_eq!(dl.first_attempt_ms, t);
            assert_eq!(dl.last_attempt_ms, *want.last().unwrap());
        }
    }

    /// Failing twice then succeeding leaves no dead letter.
    #[test]
    fn success_on_the_last_retry_is_done() {
        let ev = event("r", 0);
        let Step::Retry(ev) = next_step(ev, fail(), policy(2), 0) else {
            panic!()
        };
        let Step::Retry(ev) = next_step(ev, fail(), policy(2), W) else {
            panic!()
        };
        assert_eq!(
            next_step(ev, Attempt::Success, policy(2), 3 * W),
            Step::Done
        );
    }

    /// Throttling backs off 1 s, 2 s, 4 s ... up to 5 min without using
    /// attempts, and ends in EventAgeExceeded once the next try would be
    /// past the maximum age.
    #[test]
    fn throttles_back_off_until_the_event_is_too_old() {
        let mut p = policy(2);
        p.maximum_event_age_ms = 60_000;
        let mut ev = event("r", 0);
        let mut now = 0;
        let mut waits = Vec::new();
        let dl = loop {
            let throttled = Attempt::SystemError {
                error_type: "Throttled".into(),
                message: "reserved concurrency".into(),
            };
            match next_step(ev, throttled, p, now) {
                Step::Retry(next) => {
                    waits.push(next.due_ms - now);
                    now = next.due_ms;
                    ev = next;
                }
                Step::DeadLetter(d) => break d,
                Step::Done => panic!(),
            }
        };
        assert_eq!(waits, vec![1_000, 2_000, 4_000, 8_000, 16_000]);
        assert_eq!(dl.condition, Condition::EventAgeExceeded);
        assert_eq!(dl.attempts, 0, "throttles are not attempts");
        assert_eq!(dl.error_type, "Throttled");
        let long = {
            let mut e = event("x", 0);
            e.system_failures = 30;
            e
        };
        let Step::Retry(e) = next_step(
            long,
            Attempt::SystemError {
                error_type: "t".into(),
                message: String::new(),
            },
            policy(2),
            0,
        ) else {
            panic!()
        };
        assert_eq!(e.due_ms, SYSTEM_BACKOFF_MAX_MS, "capped at 5 minutes");
    }

    /// A function with no room is held without blocking the others, in
    /// due order across functions; busy events are skipped; a held
    /// function's events past their age expire, oldest first.
    #[test]
    fn plan_holds_throttled_functions_without_starving_others() {
        let mut q = Queues::default();
        for i in 0..5 {
            let mut e = event(&format!("t{i}"), i);
            e.function = "throttled".into();
            q.enqueue(e);
        }
        q.enqueue(event("a", 12));
        q.enqueue(event("b", 10));
        let mut e = event("c", 11);
        e.function = "g".into();
        q.enqueue(e);
        let mut asked = Vec::new();
        let plan = q.plan(
            100,
            10,
            1000,
            |id| id == "b",
            |ev| {
                asked.push(ev.request_id.clone());
                if ev.function == "throttled" {
                    // t0 and t1 are 98+ ms old: past an age of 98 ms.
                    Admit::Hold {
                        maximum_event_age_ms: 98,
                    }
                } else {
                    Admit::Run { reserved: false }
                }
            },
        );
        let run: Vec<&str> = plan
            .run
            .iter()
            .map(|(e, _)| e.request_id.as_str())
            .collect();
        assert_eq!(run, vec!["c", "a"], "due order across functions");
        assert_eq!(
            asked,
            vec!["t0", "c", "a"],
            "one question per held function"
        );
        assert_eq!(plan.held_functions, 1);
        let expired: Vec<&str> = plan.expired.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(expired, vec!["t0", "t1", "t2"]);
        // `want` and `max_scan` bound a pass.
        let p = q.plan(100, 1, 1000, |_| false, |_| Admit::Run { reserved: true });
        assert_eq!(p.run.len(), 1);
        assert!(p.run[0].1);
        let p = q.plan(100, 10, 3, |_| false, |_| Admit::Run { reserved: false });
        assert_eq!((p.scanned, p.run.len()), (3, 3));
        // Not yet due: not looked at.
        assert_eq!(
            q.plan(2, 10, 100, |_| false, |_| Admit::Run { reserved: false })
                .scanned,
            3
        );
        // Removing events keeps the per-function lanes tidy.
        for id in ["t0", "t1", "t2", "t3", "t4"] {
            q.apply_step(id, Step::Done);
        }
        assert!(!q.due.contains_key("throttled"));

        assert!(!past_age(&event("x", 1_000), 60_000, 60_999));
        assert!(past_age(&event("x", 1_000), 60_000, 61_000));
        let d = expire_throttled(event("x", 0), "reserved concurrency 0", 70_000);
        assert_eq!(d.condition, Condition::EventAgeExceeded);
        assert_eq!(d.attempts, 0);
        assert_eq!(
            (d.error_type.as_str(), d.error_message.as_str()),
            ("Throttled", "reserved concurrency 0")
        );
        // A function error seen before the throttling stays the last error.
        let mut e = event("y", 0);
        e.attempts = 1;
        e.last_error_type = "ValueError".into();
        let d = expire_throttled(e, "throttled", 70_000);
        assert_eq!((d.attempts, d.error_type.as_str()), (1, "ValueError"));
    }

    /// A key used again within its window names the first event and
    /// enqueues nothing; after the window (or for another function) it is
    /// new again.
    #[test]
    fn idempotency_keys_deduplicate_within_their_window() {
        let mut q = Queues::default();
        assert_eq!(
            q.enqueue_keyed(event("r1", 0), "k", 100),
            ("r1".into(), true)
        );
        assert_eq!(
            q.enqueue_keyed(event("r2", 50), "k", 150),
            ("r1".into(), false)
        );
        assert!(!q.events.contains_key("r2"));
        let mut other = event("r3", 60);
        other.function = "g".into();
        assert_eq!(q.enqueue_keyed(other, "k", 160), ("r3".into(), true));
        // The first event finishing does not end the window.
        q.apply_step("r1", Step::Done);
        assert_eq!(
            q.enqueue_keyed(event("r4", 99), "k", 199),
            ("r1".into(), false)
        );
        // At its expiry the key is gone.
        assert_eq!(
            q.enqueue_keyed(event("r5", 100), "k", 200),
            ("r5".into(), true)
        );
        assert_eq!(q.keys.len(), 2);
        assert_eq!(q.key_expiry.len(), 2);
    }

    /// The pending payload bytes follow enqueue, retry and removal; a
    /// dead-letter queue is bounded by payload bytes too.
    #[test]
    fn queue_bytes_and_dead_letter_bytes_are_bounded() {
        let mut q = Queues::default();
        let mut a = event("a", 0);
        a.payload = "x".repeat(100);
        q.enqueue(a.clone());
        q.enqueue(event("b", 0));
        assert_eq!(q.bytes, 100 + 7);
        let Step::Retry(next) = next_step(a.clone(), fail(), policy(2), 0) else {
            panic!()
        };
        q.apply_step("a", Step::Retry(next));
        assert_eq!(q.bytes, 107, "a retry keeps its bytes once");
        q.apply_step("a", Step::Done);
        q.apply_step("b", Step::Done);
        assert_eq!(q.bytes, 0);

        let big = "y".repeat(DLQ_BYTES / 3 + 1);
        for i in 0..4 {
            let mut e = event(&format!("d{i}"), 0);
            e.payload = big.clone();
            let Step::DeadLetter(d) = next_step(e, fail(), policy(0), 0) else {
                panic!()
            };
            q.dead_letter(d);
        }
        assert_eq!(q.dlq["f"].len(), 2, "two records fit in the byte bound");
        assert_eq!(q.dlq["f"][0].request_id, "d2", "the oldest went first");
        assert_eq!(q.dlq_dropped["f"], 2);
    }

    /// Error messages are cut to 1 KB on a character boundary.
    #[test]
    fn dead_letter_messages_are_bounded() {
        let ev = event("r", 0);
        let long = "é".repeat(1000);
        let Step::DeadLetter(d) = next_step(
            ev,
            Attempt::FunctionError {
                error_type: "E".into(),
                message: long,
            },
            policy(0),
            0,
        ) else {
            panic!()
        };
        assert!(d.error_message.len() <= ERROR_MESSAGE_BOUND);
        assert!(d.error_message.len() >= ERROR_MESSAGE_BOUND - 1);
    }

    /// The queue orders by due time, applies each step once (unknown ids
    /// change nothing), bounds the dead-letter queue with a drop count, and
    /// redrives with a fresh attempt count.
    #[test]
    fn queue_steps_bound_and_redrive() {
        let mut q = Queues::default();
        assert!(q.enqueue(event("b", 20)));
        assert!(q.enqueue(event("a", 10)));
        assert!(!q.enqueue(event("a", 99)), "same request id applied once");
        let due: Vec<&str> = q
            .due_now(15, 10)
            .iter()
            .map(|e| e.request_id.as_str())
            .collect();
        assert_eq!(due, vec!["a"]);
        assert_eq!(q.due_now(100, 10).len(), 2);

        let a = q.events["a"].clone();
        let step = next_step(a, fail(), policy(0), 10);
        assert!(q.apply_step("a", step.clone()));
        assert!(
            !q.apply_step("a", step),
            "a second dispatcher's result is ignored"
        );
        assert_eq!(q.dlq["f"].len(), 1);
        assert!(q.apply_step("b", Step::Done));
        assert!(q.events.is_empty() && q.due.is_empty());

        assert!(q
            .redrive("f", Some(&["nope".into()]), 50)
            .unwrap_err()
            .contains("nope"));
        assert_eq!(q.dlq["f"].len(), 1, "a failed redrive moves nothing");
        assert_eq!(q.redrive("f", None, 50).unwrap(), 1);
        let back = &q.events["a"];
        assert_eq!(
            (back.attempts, back.due_ms, back.request_id.as_str()),
            (0, 50, "a")
        );
        assert!(q.dlq["f"].is_empty());

        for i in 0..(DLQ_BOUND + 3) {
            let Step::DeadLetter(d) = next_step(event(&format!("d{i}"), 0), fail(), policy(0), 0)
            else {
                panic!()
            };
            q.dead_letter(d);
        }
        assert_eq!(q.dlq["f"].len(), DLQ_BOUND);
        assert_eq!(q.dlq_dropped["f"], 3);
        assert_eq!(
            q.dlq["f"].front().unwrap().request_id,
            "d3",
            "oldest dropped"
        );
        assert_eq!(q.purge("f"), DLQ_BOUND);
    }

    fn keyed(id: &str, key: &str, t: u64) -> AsyncEvent {
        let mut e = event(id, t);
        e.ordering_key = key.into();
        e
    }

    /// The queue's indexes agree: an event is in `due` exactly when it is
    /// unordered or its lane's head, every ordered event is in its lane,
    /// no lane is empty, and `bytes` is the sum of the payloads.
    fn check(q: &Queues) {
        let mut bytes = 0;
        for ev in q.events.values() {
            bytes += ev.payload.len() as u64;
            let in_due = q
                .due
                .get(&ev.function)
                .is_some_and(|s| s.contains(&(ev.due_ms, ev.request_id.clone())));
            assert_eq!(in_due, q.is_head(ev), "{} in due iff head", ev.request_id);
            if let Some(lane) = lane_of(ev) {
                assert_eq!(q.ordered[&lane].get(&ev.seq), Some(&ev.request_id));
            }
        }
        assert_eq!(bytes, q.bytes);
        let due: usize = q.due.values().map(|s| s.len()).sum();
        assert_eq!(due, q.events.values().filter(|e| q.is_head(e)).count());
        let laned: usize = q.ordered.values().map(|l| l.len()).sum();
        let ordered = q.events.values().filter(|e| !e.ordering_key.is_empty());
        assert_eq!(laned, ordered.count());
        assert!(q.ordered.values().all(|l| !l.is_empty()));
    }

    /// Runs the queue as the dispatcher does, every planned attempt
    /// finishing at once: the clock jumps to the earliest due event (if
    /// later), a pass runs what `plan` gives, `fails(id, attempts so far)`
    /// decides each outcome. Checks that no pass runs two events of one
    /// lane. Returns each attempt's (time, request id), in order.
    fn drive(q: &mut Queues, p: Policy, fails: impl Fn(&str, u32) -> bool) -> Vec<(u64, String)> {
        let mut ran = Vec::new();
        let mut now = 0;
        for _ in 0..10_000 {
            let next = q.due.values().filter_map(|s| s.first()).map(|(t, _)| *t);
            let Some(due) = next.min() else {
                assert!(q.events.is_empty() && q.ordered.is_empty());
                return ran;
            };
            // A promoted head is due since long ago: the clock stays.
            now = now.max(due);
            let plan = q.plan(
                now,
                64,
                10_000,
                |_| false,
                |_| Admit::Run { reserved: false },
            );
            let lanes: Vec<String> = plan.run.iter().filter_map(|(e, _)| lane_of(e)).collect();
            let distinct: BTreeSet<&String> = lanes.iter().collect();
            assert_eq!(
                distinct.len(),
                lanes.len(),
                "one attempt per lane at a time"
            );
            for (ev, _) in plan.run {
                ran.push((now, ev.request_id.clone()));
                let outcome = if fails(&ev.request_id, ev.attempts) {
                    fail()
                } else {
                    Attempt::Success
                };
                let id = ev.request_id.clone();
                assert!(q.apply_step(&id, next_step(ev, outcome, p, now)));
            }
            check(q);
        }
        panic!("the queue never drained");
    }

    fn order_of<'a>(ran: &'a [(u64, String)], prefix: &str) -> Vec<&'a str> {
        ran.iter()
            .map(|(_, id)| id.as_str())
            .filter(|id| id.starts_with(prefix))
            .collect()
    }

    /// Events of one key run in submission order whatever their due
    /// times, each key apart; unordered events keep due-time order.
    #[test]
    fn ordering_keys_run_in_submission_order_across_due_times() {
        let mut q = Queues::default();
        let mut want = BTreeMap::<&str, Vec<String>>::new();
        for i in 0..40u64 {
            let key = ["a", "b"][i as usize % 2];
            let id = format!("{key}{i:02}");
            let mut e = keyed(&id, key, 0);
            // Due times out of submission order (later ones often sooner).
            e.due_ms = (i * 7919) % 500;
            q.enqueue(e);
            want.entry(key).or_default().push(id);
        }
        for (i, t) in [300u64, 100, 200].into_iter().enumerate() {
            let mut e = event(&format!("u{i}"), 0);
            e.due_ms = t;
            q.enqueue(e);
        }
        check(&q);
        let seqs: Vec<u64> = q.events.values().map(|e| e.seq).collect();
        let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!((distinct.len(), q.next_seq), (43, 43), "one seq each");
        assert_eq!(q.ordered.len(), 2);
        assert_eq!(q.due["f"].len(), 2 + 3, "two lane heads and the unordered");

        let ran = drive(&mut q, policy(2), |_, _| false);
        assert_eq!(ran.len(), 43, "each ran once");
        for (key, ids) in &want {
            assert_eq!(order_of(&ran, key), *ids, "key {key} in submission order");
        }
        assert_eq!(order_of(&ran, "u"), vec!["u1", "u2", "u0"], "by due time");
    }

    /// A failing head holds its key through its retries (rescheduled in
    /// place: it stays the head, the next does not become due), while
    /// another key, unordered events and the same key of another function
    /// run at once; once it is dead-lettered the key's next events run.
    #[test]
    fn a_failing_head_holds_only_its_own_key() {
        let t = 10_000;
        let p = policy(2);
        let mut q = Queues::default();
        for id in ["a0", "a1", "a2"] {
            q.enqueue(keyed(id, "a", t));
        }
        for id in ["b0", "b1", "b2"] {
            q.enqueue(keyed(id, "b", t));
        }
        q.enqueue(event("u0", t));
        q.enqueue(event("u1", t));
        let mut g = keyed("g0", "a", t);
        g.function = "g".into();
        q.enqueue(g);

        // The first attempt of a0 fails: a retry in place.
        let a0 = q.events["a0"].clone();
        let seq = a0.seq;
        assert!(q.apply_step("a0", next_step(a0, fail(), p, t)));
        check(&q);
        assert_eq!(
            q.ordered["f/a"].first_key_value(),
            Some((&seq, &"a0".to_string())),
            "still the head"
        );
        assert_eq!(q.events["a0"].seq, seq, "a retry keeps its seq");
        assert!(q.due["f"].contains(&(t + W, "a0".to_string())));
        let plan = q.plan(t, 64, 100, |_| false, |_| Admit::Run { reserved: false });
        let run: BTreeSet<&str> = plan
            .run
            .iter()
            .map(|(e, _)| e.request_id.as_str())
            .collect();
        assert_eq!(run, BTreeSet::from(["b0", "u0", "u1", "g0"]), "a1 waits");

        let ran = drive(&mut q, p, |id, _| id == "a0");
        let at = |id: &str| -> Vec<u64> {
            ran.iter()
                .filter(|(_, r)| r == id)
                .map(|(t, _)| *t)
                .collect()
        };
        assert_eq!(at("a0"), vec![t + W, t + 3 * W], "its two retries");
        for id in ["b0", "b1", "b2", "u0", "u1", "g0"] {
            assert_eq!(at(id), vec![t], "{id} not held by a0");
        }
        assert_eq!((at("a1"), at("a2")), (vec![t + 3 * W], vec![t + 3 * W]));
        let pos = |id: &str| ran.iter().position(|(_, r)| r == id).unwrap();
        assert!(pos("a0") < pos("a1") && pos("a1") < pos("a2"));
        let last_a0 = ran.iter().rposition(|(_, r)| r == "a0").unwrap();
        assert!(last_a0 < pos("a1"), "a1 after a0's last retry");
        assert_eq!(q.dlq["f"].len(), 1);
        assert_eq!(q.dlq["f"][0].request_id, "a0");
        assert_eq!(q.dlq["f"][0].ordering_key, "a");
        assert_eq!(q.bytes, 0);
    }

    /// Whichever way the head leaves (dead-lettered, expired while
    /// throttled, done), the next event of its lane becomes due; a stale
    /// step for a later event takes it out without unblocking anything; a
    /// redrive puts a dead letter back with its key at the lane's tail;
    /// the last event leaving removes the lane.
    #[test]
    fn the_next_event_runs_whichever_way_the_head_leaves() {
        let mut q = Queues::default();
        for i in 0..5 {
            let mut e = keyed(&format!("x{i}"), "k", 0);
            e.payload = "p".repeat(10 + i);
            q.enqueue(e);
        }
        q.enqueue(event("u", 0));
        let runnable = |q: &Queues| -> Vec<String> {
            q.plan(
                1_000,
                64,
                100,
                |_| false,
                |_| Admit::Run { reserved: false },
            )
            .run
            .into_iter()
            .map(|(e, _)| e.request_id)
            .filter(|id| id != "u")
            .collect()
        };
        assert_eq!(runnable(&q), vec!["x0"]);

        // Dead-lettered after its retries (here none).
        let x0 = q.events["x0"].clone();
        let step = next_step(x0, fail(), policy(0), 100);
        assert!(matches!(step, Step::DeadLetter(_)));
        q.apply_step("x0", step);
        check(&q);
        assert_eq!(runnable(&q), vec!["x1"]);

        // Expired while its function is throttled: only the head is
        // looked at and expires; x2 is not touched.
        let plan = q.plan(
            1_000,
            64,
            100,
            |_| false,
            |_| Admit::Hold {
                maximum_event_age_ms: 500,
            },
        );
        let expired: Vec<&str> = plan.expired.iter().map(|e| e.request_id.as_str()).collect();
        assert_eq!(expired, vec!["u", "x1"], "of the lane, its head only");
        let d = expire_throttled(plan.expired[1].clone(), "throttled", 1_000);
        q.apply_step("x1", Step::DeadLetter(d));
        check(&q);
        assert_eq!(runnable(&q), vec!["x2"]);

        // Done (a success, or a deleted function's event dropped).
        q.apply_step("x2", Step::Done);
        check(&q);
        assert_eq!(runnable(&q), vec!["x3"]);

        // A stale step for an event behind the head: it goes, x3 stays
        // the head, nothing else becomes due.
        q.apply_step("x4", Step::Done);
        check(&q);
        assert_eq!(runnable(&q), vec!["x3"]);
        let Step::Retry(r) = next_step(q.events["x3"].clone(), fail(), policy(2), 1_000) else {
            panic!()
        };
        q.apply_step("x3", Step::Retry(r));
        check(&q);
        assert!(runnable(&q).is_empty(), "x3 waits for its retry");

        // A redrive: back with its key, behind x3.
        assert_eq!(q.redrive("f", Some(&["x0".into()]), 1_000).unwrap(), 1);
        check(&q);
        let x0 = &q.events["x0"];
        assert_eq!((x0.ordering_key.as_str(), x0.attempts), ("k", 0));
        assert!(x0.seq > q.events["x3"].seq, "at the tail");
        assert!(!q.is_head(x0));
        q.apply_step("x3", Step::Done);
        check(&q);
        assert_eq!(runnable(&q), vec!["x0"]);
        q.apply_step("x0", Step::Done);
        q.apply_step("u", Step::Done);
        check(&q);
        assert!(q.ordered.is_empty() && q.due.is_empty() && q.events.is_empty());
        assert_eq!(q.bytes, 0);
    }

    /// 10,000 events on one key: a pass looks at the head only (and at
    /// nothing of the key while the head is in flight or waits for a
    /// retry), whatever else is due.
    #[test]
    fn a_long_lane_costs_a_pass_one_look() {
        let mut q = Queues::default();
        for i in 0..10_000 {
            q.enqueue(keyed(&format!("k{i:05}"), "topic/0", i));
        }
        for i in 0..3 {
            q.enqueue(event(&format!("u{i}"), 20_000));
        }
        let now = 30_000;
        let run = |_: &AsyncEvent| Admit::Run { reserved: false };
        let p = q.plan(now, 64, 10_000, |_| false, run);
        let ids: Vec<&str> = p.run.iter().map(|(e, _)| e.request_id.as_str()).collect();
        assert_eq!(ids, vec!["k00000", "u0", "u1", "u2"]);
        assert_eq!(p.scanned, 4);
        let p = q.plan(now, 64, 10_000, |id| id == "k00000", run);
        assert_eq!((p.scanned, p.run.len()), (4, 3), "in flight: skipped, once");

        let head = q.events["k00000"].clone();
        let Step::Retry(r) = next_step(head, fail(), policy(2), now) else {
            panic!()
        };
        q.apply_step("k00000", Step::Retry(r));
        let p = q.plan(now, 64, 10_000, |_| false, run);
        assert_eq!((p.scanned, p.run.len()), (3, 3), "waiting for its retry");
        q.apply_step("k00000", Step::Done);
        let p = q.plan(now, 64, 10_000, |_| false, run);
        assert_eq!(p.scanned, 4);
        assert_eq!(p.run[0].0.request_id, "k00001");
        assert_eq!(q.ordered["f/topic/0"].len(), 9_999);
        check(&q);
    }

    /// A snapshot written before ordering keys (no seq, key, lanes or
    /// counter) loads: its events are unordered and still run; new
    /// events get seqs from 1; its dead letters redrive unordered.
    #[test]
    fn queues_from_before_ordering_keys_still_load() {
        let old = r#"{
            "events": {"a": {"request_id": "a", "function": "f",
                "qualifier": "$LATEST", "payload": "{}", "enqueued_ms": 5,
                "due_ms": 5, "attempts": 0, "system_failures": 0,
                "first_attempt_ms": 0, "last_attempt_ms": 0,
                "last_error_type": "", "last_error_message": ""}},
            "due": {"f": [[5, "a"]]},
            "dlq": {"f": [{"request_id": "d", "function": "f",
                "qualifier": "$LATEST", "payload": "{}",
                "condition": "RetriesExhausted", "attempts": 3,
                "error_type": "E", "error_message": "m",
                "first_attempt_ms": 1, "last_attempt_ms": 2,
                "enqueued_ms": 1, "dead_lettered_ms": 3}]},
            "dlq_dropped": {},
            "bytes": 2
        }"#;
        let mut q: Queues = serde_json::from_str(old).unwrap();
        let a = &q.events["a"];
        assert_eq!((a.ordering_key.as_str(), a.seq), ("", 0));
        assert!(q.ordered.is_empty());
        assert_eq!(q.next_seq, 0);
        check(&q);
        q.enqueue(keyed("k1", "x", 10));
        q.enqueue(keyed("k2", "x", 10));
        assert_eq!((q.events["k1"].seq, q.events["k2"].seq), (1, 2));
        q.redrive("f", None, 10).unwrap();
        assert_eq!(q.events["d"].ordering_key, "");
        check(&q);
        let ran = drive(&mut q, policy(2), |_, _| false);
        assert_eq!(order_of(&ran, "k"), vec!["k1", "k2"]);
        assert_eq!(ran.len(), 4);
        // And the new fields survive a round trip.
        q.enqueue(keyed("k3", "x", 20));
        let again: Queues = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(again, q);
    }
}
