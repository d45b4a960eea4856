//! Reserved concurrency: calls in flight per function with a limit,
//! counted on the leader (every controller forwards those calls to it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Calls in flight per function with reserved concurrency.
#[derive(Default)]
pub struct ReservedConcurrency {
    running: Mutex<HashMap<String, u32>>,
}

impl ReservedConcurrency {
    /// Takes one of `function`'s `limit` reserved-concurrency slots, or
    /// says how many are running.
    pub(crate) fn try_take(&self, function: &str, limit: u32) -> Result<(), u32> {
        let mut g = self.running.lock().expect("lock poisoned");
        let n = g.entry(function.to_string()).or_insert(0);
        if *n >= limit {
            let running = *n;
            if running == 0 {
                g.remove(function);
            }
            return Err(running);
        }
        *n += 1;
        Ok(())
    }

    pub(crate) fn release(&self, function: &str) {
        let mut g = self.running.lock().expect("lock poisoned");
        if let Some(n) = g.get_mut(function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.remove(function);
            }
        }
    }
}

/// Releases a reserved-concurrency slot when the call ends, however it
/// ends. A caller that goes away while its call is on a worker does not
/// stop the function there: the slot is then held until the call could
/// last (its timeout), so the limit is not exceeded behind its back.
pub(crate) struct Slot {
    state: Arc<ReservedConcurrency>,
    function: String,
    /// Set while a call is on a worker: how long it may still run.
    on_worker: Option<Duration>,
}

impl Slot {
    /// Owns a slot already taken with `try_take`.
    pub(crate) fn adopt(state: &Arc<ReservedConcurrency>, function: String) -> Slot {
        Slot {
            state: state.clone(),
            function,
            on_worker: None,
        }
    }

    /// A call is on a worker and may run for up to `limit`.
    pub(crate) fn sent(&mut self, limit: Duration) {
        self.on_worker = Some(limit);
    }

    /// The worker answered.
    pub(crate) fn answered(&mut self) {
        self.on_worker = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(limit) = self.on_worker else {
            self.state.release(&self.function);
            return;
        };
        // Dropped mid-call (the caller went away): the function still runs.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let (state, function) = (self.state.clone(), std::mem::take(&mut self.function));
                rt.spawn(async move {
                    tokio::time::sleep(limit).await;
                    state.release(&function);
                });
            }
            Err(_) => self.state.release(&self.function),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot comes back when its call ends; a slot whose caller went away
    /// while the call was on a worker stays taken for as long as the call
    /// may run, so the reservation is not exceeded.
    #[tokio::test]
    async fn an_abandoned_call_keeps_its_reserved_slot_until_it_may_have_ended() {
        let st: Arc<ReservedConcurrency> = Arc::default();
        st.try_take("f", 1).unwrap();
        let mut s = Slot::adopt(&st, "f".into());
        s.sent(Duration::from_millis(100));
        s.answered();
        drop(s);
        assert!(st.try_take("f", 1).is_ok(), "answered: released at once");

        let mut s = Slot::adopt(&st, "f".into());
        s.sent(Duration::from_millis(100));
        drop(s);
        assert_eq!(st.try_take("f", 1), Err(1), "still running on the worker");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            st.try_take("f", 1).is_ok(),
            "released after the call's limit"
        );
    }
}
