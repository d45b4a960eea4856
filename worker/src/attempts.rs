//! Asynchronous attempts on a worker. Two guards keep one async event from
//! running twice here when the controllers' leadership changes mid-attempt:
//!
//! - **Fencing by Raft term.** Each dispatch carries the term of the leader
//!   that sent it, and the worker keeps the highest leader term it has seen
//!   (in dispatches and in the leader's heartbeat replies). A dispatch from
//!   an older term, a deposed leader that has not noticed yet, is refused
//!   without running. The fence lapses when no leader of its term has been
//!   heard from for `FENCE_TTL`: a controller group recreated from scratch
//!   (terms start again at 1) is not locked out by a worker that outlived
//!   it; a deposed leader still reaching the worker after that long is
//!   admitted again (at-least-once, never lost).
//! - **One run per attempt.** An attempt is named by a key derived from the
//!   event's replicated state (request id, acceptance time, attempt and
//!   throttle counts), so the next leader re-dispatching an attempt whose
//!   step never committed names the same attempt: it joins the run still
//!   going, or gets the result of the finished one (kept for a while),
//!   instead of running the function again. A retry or a redrive changes the
//!   state and therefore the key.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a finished attempt's result is kept for a re-dispatch.
pub const RESULT_TTL: Duration = Duration::from_secs(300);
/// Bytes of kept results (payloads and log tails).
pub const RESULT_BYTES: usize = 64 << 20;
/// How long the fence holds without word from a leader of its term.
pub const FENCE_TTL: Duration = Duration::from_secs(10);

pub struct Attempts<T> {
    /// The newest leader term seen, and when a leader of it was last heard.
    fence: Mutex<(u64, Instant)>,
    fence_ttl: Duration,
    inner: Mutex<Inner<T>>,
    ttl: Duration,
    max_bytes: usize,
}

struct Inner<T> {
    running: HashMap<String, watch::Receiver<Option<T>>>,
    done: HashMap<String, (T, usize)>,
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

/// What a dispatch of an attempt should do.
pub enum Claim<T> {
    /// Run it, then report through `finish` or `abandon`.
    Run(watch::Sender<Option<T>>),
    /// The same attempt is running here: wait for its result (`None` when
    /// it was abandoned without running).
    Wait(watch::Receiver<Option<T>>),
    /// The same attempt already finished here: its result.
    Done(T),
}

impl<T: Clone> Default for Attempts<T> {
    fn default() -> Self {
        Attempts::new(RESULT_TTL, RESULT_BYTES, FENCE_TTL)
    }
}

impl<T: Clone> Attempts<T> {
    pub fn new(ttl: Duration, max_bytes: usize, fence_ttl: Duration) -> Attempts<T> {
        Attempts {
            fence: Mutex::new((0, Instant::now())),
            fence_ttl,
            inner: Mutex::new(Inner {
                running: HashMap::new(),
                done: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
            }),
            ttl,
            max_bytes,
        }
    }

    /// Records a leader of `term`, heard in a heartbeat reply.
    pub fn observe_term(&self, term: u64) {
        if term > 0 {
            let _ = self.admits(term);
        }
    }

    /// Whether a dispatch from the leader of `term` may run: not when a
    /// newer leader has been heard from within the fence's lifetime (the
    /// error is that newer term).
    pub fn admits(&self, term: u64) -> Result<(), u64> {
        let mut f = self.fence.lock().expect("lock poisoned");
        let now = Instant::now();
        if term >= f.0 || now.duration_since(f.1) > self.fence_ttl {
            *f = (term, now);
            Ok(())
        } else {
            Err(f.0)
        }
    }

    pub fn fence(&self) -> u64 {
        self.fence.lock().expect("lock poisoned").0
    }

    /// Claims the attempt `key`.
    pub fn claim(&self, key: &str) -> Claim<T> {
        let mut g = self.inner.lock().expect("lock poisoned");
        self.expire(&mut g, Instant::now());
        if let Some((t, _)) = g.done.get(key) {
            return Claim::Done(t.clone());
        }
        if let Some(rx) = g.running.get(key) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        g.running.insert(key.to_string(), rx);
        Claim::Run(tx)
    }

    /// Records a claimed attempt's result (`size` bytes) and hands it to
    /// anyone waiting for it.
    pub fn finish(&self, key: &str, tx: watch::Sender<Option<T>>, result: T, size: usize) {
        {
            let mut g = self.inner.lock().expect("lock poisoned");
            g.running.remove(key);
            if let Some((_, old)) = g.done.insert(key.to_string(), (result.clone(), size)) {
                g.bytes -= old;
            }
            g.bytes += size;
            g.order.push_back((Instant::now(), key.to_string()));
            self.expire(&mut g, Instant::now());
        }
        let _ = tx.send(Some(result));
    }

    /// Gives up a claimed attempt that did not run (no sandbox, worker
    /// full): waiters learn it did not run, and the next claim runs it.
    pub fn abandon(&self, key: &str, tx: watch::Sender<Option<T>>) {
        self.inner
            .lock()
            .expect("lock poisoned")
            .running
            .remove(key);
        drop(tx);
    }

    fn expire(&self, g: &mut Inner<T>, now: Instant) {
        while let Some((at, key)) = g.order.front() {
            if now.duration_since(*at) < self.ttl && g.bytes <= self.max_bytes {
                break;
            }
            let key = key.clone();
            g.order.pop_front();
            if let Some((_, n)) = g.done.remove(&key) {
                g.bytes -= n;
            }
        }
    }

    /// Whether the attempt `key` is running here or has a kept result.
    pub fn holds(&self, key: &str) -> bool {
        let mut g = self.inner.lock().expect("lock poisoned");
        self.expire(&mut g, Instant::now());
        g.running.contains_key(key) || g.done.contains_key(key)
    }

    /// Attempts running and results kept (for metrics and tests).
    pub fn counts(&self) -> (usize, usize) {
        let g = self.inner.lock().expect("lock poisoned");
        (g.running.len(), g.done.len())
    }
}

/// Waits for the result of an attempt running elsewhere on this worker;
/// `None` when it was abandoned without running.
pub async fn wait<T: Clone>(mut rx: watch::Receiver<Option<T>>) -> Option<T> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_leader_fences_off_the_older_one() {
        let a: Attempts<u32> = Attempts::default();
        assert!(a.admits(3).is_ok());
        a.observe_term(5);
        assert_eq!(a.admits(4), Err(5), "a deposed leader's dispatch");
        assert!(a.admits(5).is_ok());
        assert!(a.admits(6).is_ok(), "a dispatch raises the fence too");
        assert_eq!(a.admits(5), Err(6));
        a.observe_term(2);
        assert_eq!(a.fence(), 6, "a lower term does not lower a live fence");
    }

    /// A fence whose leader has gone silent lapses: a recreated controller
    /// group, whose terms start again, is not locked out.
    #[test]
    fn a_fence_without_its_leader_lapses() {
        let a: Attempts<u32> = Attempts::new(RESULT_TTL, RESULT_BYTES, Duration::from_millis(50));
        a.observe_term(9);
        assert_eq!(a.admits(1), Err(9));
        std::thread::sleep(Duration::from_millis(30));
        a.observe_term(9);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(a.admits(1), Err(9), "heard again: still fenced");
        std::thread::sleep(Duration::from_millis(60));
        assert!(a.admits(1).is_ok(), "term 9 silent past the TTL");
        assert_eq!(a.fence(), 1);
        assert_eq!(a.admits(0), Err(1));
    }

    #[tokio::test]
    async fn one_run_per_attempt_key() {
        let a: Attempts<String> = Attempts::default();
        let Claim::Run(tx) = a.claim("ev:1:0:0") else {
            panic!("first claim runs")
        };
        let Claim::Wait(rx) = a.claim("ev:1:0:0") else {
            panic!("second claim waits")
        };
        let waiter = tokio::spawn(wait(rx));
        assert!(matches!(a.claim("ev:1:1:0"), Claim::Run(_)), "a retry runs");
        a.finish("ev:1:0:0", tx, "result".into(), 6);
        assert_eq!(waiter.await.unwrap().as_deref(), Some("result"));
        let Claim::Done(r) = a.claim("ev:1:0:0") else {
            panic!("finished: its result")
        };
        assert_eq!(r, "result");
        assert!(a.holds("ev:1:0:0") && a.holds("ev:1:1:0") && !a.holds("ev:9:0:0"));
    }

    #[tokio::test]
    async fn an_abandoned_attempt_runs_again_and_waiters_learn_it_did_not_run() {
        let a: Attempts<String> = Attempts::default();
        let Claim::Run(tx) = a.claim("k") else {
            panic!()
        };
        let Claim::Wait(rx) = a.claim("k") else {
            panic!()
        };
        a.abandon("k", tx);
        assert_eq!(wait(rx).await, None);
        assert!(matches!(a.claim("k"), Claim::Run(_)));
    }

    #[test]
    fn results_are_kept_for_a_while_within_a_byte_bound() {
        let a: Attempts<String> = Attempts::new(Duration::from_millis(50), 10, FENCE_TTL);
        for k in ["a", "b", "c"] {
            let Claim::Run(tx) = a.claim(k) else { panic!() };
            a.finish(k, tx, k.into(), 4);
        }
        assert_eq!(a.counts(), (0, 2), "12 bytes > 10: the oldest went");
        assert!(matches!(a.claim("a"), Claim::Run(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(a.claim("c"), Claim::Run(_)), "expired");
    }
}
