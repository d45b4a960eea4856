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
    /// without walking its backlog.
    pub due: BTreeMap<String, BTreeSet<(u64, String)>>,
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

impl Queues {
    /// Adds an event; an event with the same request id is kept as is
    /// (a retried enqueue is applied once).
    pub fn enqueue(&mut self, ev: AsyncEvent) -> bool {
        if self.events.contains_key(&ev.request_id) {
            return false;
        }
        self.due
            .entry(ev.function.clone())
            .or_default()
            .insert((ev.due_ms, ev.request_id.clone()));
        self.bytes += ev.payload.len() as u64;
        self.events.insert(ev.request_id.clone(), ev);
        true
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

    fn remove(&mut self, request_id: &str) -> Option<AsyncEvent> {
        let ev = self.events.remove(request_id)?;
        self.bytes = self.bytes.saturating_sub(ev.payload.len() as u64);
        if let Some(set) = self.due.get_mut(&ev.function) {
            set.remove(&(ev.due_ms, ev.request_id.clone()));
            if set.is_empty() {
                self.due.remove(&ev.function);
            }
        }
        Some(ev)
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
            Step::Retry(ev) => {
                self.remove(request_id);
                self.enqueue(ev);
            }
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
            let depth = d.depth;
            let mut ev = AsyncEvent::new(d.request_id, d.function, d.qualifier, d.payload, now_ms);
            ev.depth = depth;
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
    /// starve other functions.
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
}
