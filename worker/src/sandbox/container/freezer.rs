//! Idle sandboxes are frozen (their cgroup: v2 `cgroup.freeze`, v1 the
//! freezer), so background processes a handler leaves running get no CPU
//! between invocations, as on Lambda. A sandbox is frozen once it has been
//! idle for [`FREEZE_AFTER`] (back-to-back calls skip the freeze/thaw
//! pair), and thawed before its next event is dispatched and before it is
//! killed (a v1-frozen process does not act on SIGKILL until thawed). The
//! runtime, blocked in `GET /next` while frozen, does not notice.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::host::{self, CgroupLayout};

/// How long a sandbox stays idle before it is frozen: what a handler's
/// background work may still run after the response, at most.
pub const FREEZE_AFTER: Duration = Duration::from_millis(10);

pub(super) struct Freezer {
    layout: CgroupLayout,
    cgroups_path: String,
    enabled: bool,
    state: Mutex<State>,
    idle: Notify,
}

#[derive(Default)]
struct State {
    /// Bumped by every change, so a freeze decided before a change is
    /// dropped.
    generation: u64,
    idle: bool,
    frozen: bool,
}

impl Freezer {
    pub(super) fn new(layout: CgroupLayout, cgroups_path: String, enabled: bool) -> Freezer {
        Freezer {
            layout,
            cgroups_path,
            enabled,
            state: Mutex::default(),
            idle: Notify::new(),
        }
    }

    /// The sandbox is about to run something (an event, a kill): thawed
    /// now if frozen, and no pending freeze happens.
    pub(super) fn busy(&self) {
        let mut st = self.state.lock().expect("lock poisoned");
        st.generation += 1;
        st.idle = false;
        if st.frozen {
            st.frozen = false;
            if let Err(e) = host::set_frozen(self.layout, &self.cgroups_path, false) {
                tracing::warn!(cgroup = %self.cgroups_path, error = %e, "thawing a sandbox");
            }
        }
    }

    /// The sandbox waits for an event: frozen after [`FREEZE_AFTER`]
    /// unless it gets busy first.
    pub(super) fn idle(&self) {
        if !self.enabled {
            return;
        }
        let mut st = self.state.lock().expect("lock poisoned");
        st.generation += 1;
        st.idle = true;
        drop(st);
        self.idle.notify_one();
    }

    /// The sandbox's freezer task: freezes it once idle long enough.
    pub(super) async fn run(self: std::sync::Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = self.idle.notified() => {}
                _ = stop.cancelled() => return,
            }
            loop {
                let seen = self.state.lock().expect("lock poisoned").generation;
                tokio::select! {
                    _ = tokio::time::sleep(FREEZE_AFTER) => {}
                    _ = stop.cancelled() => return,
                }
                let mut st = self.state.lock().expect("lock poisoned");
                if !st.idle || st.frozen {
                    break;
                }
                if st.generation != seen {
                    // Busy and idle again meanwhile: wait a full period.
                    continue;
                }
                // Under the lock: a `busy` waits for this write and then
                // thaws.
                match host::set_frozen(self.layout, &self.cgroups_path, true) {
                    Ok(()) => st.frozen = true,
                    Err(e) => {
                        tracing::debug!(cgroup = %self.cgroups_path, error = %e, "freezing an idle sandbox")
                    }
                }
                break;
            }
        }
    }
}
