//! Named long-lived tasks stopped through one cancellation token: each
//! knows its name, says when it ends, and a shutdown names those that did
//! not stop in time.
//!
//! Short per-request work (one invocation, one prewarm, destroying one
//! sandbox) stays a plain `tokio::spawn`, awaited by its caller or bounded
//! by its own timeout; the places that do it say so.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A group of named tasks sharing one shutdown token.
pub struct Tasks {
    token: CancellationToken,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Names of the tasks still running, by spawn number.
    live: Arc<Mutex<BTreeMap<u64, String>>>,
    next: AtomicU64,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new(CancellationToken::new())
    }
}

/// Forgets a task's name when it ends, however it ends (returned,
/// aborted, panicked), and says so.
struct Ended {
    live: Arc<Mutex<BTreeMap<u64, String>>>,
    n: u64,
}

impl Drop for Ended {
    fn drop(&mut self) {
        let name = self.live.lock().expect("lock poisoned").remove(&self.n);
        let name = name.as_deref().unwrap_or("?");
        if std::thread::panicking() {
            tracing::error!(task = name, "task panicked");
        } else {
            tracing::debug!(task = name, "task ended");
        }
    }
}

impl Tasks {
    pub fn new(token: CancellationToken) -> Tasks {
        Tasks {
            token,
            handles: Mutex::new(Vec::new()),
            live: Arc::default(),
            next: AtomicU64::new(0),
        }
    }

    /// The token every task of the group stops on.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Runs `task` as `name`. It must end soon after [`Tasks::token`] is
    /// cancelled.
    pub fn spawn(&self, name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.live
            .lock()
            .expect("lock poisoned")
            .insert(n, name.into());
        let ended = Ended {
            live: self.live.clone(),
            n,
        };
        let h = tokio::spawn(async move {
            let _ended = ended;
            task.await;
        });
        let mut handles = self.handles.lock().expect("lock poisoned");
        // Tasks that ended need no handle: the list stays as long as the
        // number of running tasks.
        handles.retain(|h| !h.is_finished());
        handles.push(h);
    }

    /// Names of the tasks still running.
    pub fn running(&self) -> Vec<String> {
        self.live
            .lock()
            .expect("lock poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Cancels the token and waits, up to `wait` in all, for every task to
    /// end. Tasks still running then are named and left to finish on
    /// their own (a server answering its last calls), not aborted.
    pub async fn shutdown(&self, wait: Duration) {
        self.token.cancel();
        let handles = std::mem::take(&mut *self.handles.lock().expect("lock poisoned"));
        let all = futures::future::join_all(handles);
        if tokio::time::timeout(wait, all).await.is_err() {
            tracing::warn!(tasks = ?self.running(), "tasks still running after the shutdown wait");
        }
    }

    /// Cancels the token and aborts every task now.
    pub fn abort(&self) {
        self.token.cancel();
        for h in self.handles.lock().expect("lock poisoned").drain(..) {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_named_and_stop_on_the_token() {
        let tasks = Tasks::default();
        let stop = tasks.token().clone();
        tasks.spawn("waits", async move { stop.cancelled().await });
        tasks.spawn("quick", async {});
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), vec!["waits".to_string()]);
        tasks.shutdown(Duration::from_secs(5)).await;
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_token_is_named_not_waited_for_forever() {
        let tasks = Tasks::default();
        tasks.spawn("stubborn", std::future::pending());
        tasks.shutdown(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), vec!["stubborn".to_string()]);
    }

    #[tokio::test]
    async fn abort_stops_everything() {
        let tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(tasks.running().is_empty());
        assert!(tasks.token().is_cancelled());
    }
}
