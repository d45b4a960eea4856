//! The controller's long-lived tasks: each named, all in one `JoinSet`,
//! all stopped through the shutdown token, so a shutdown waits for every
//! one of them and none outlives the controller unseen.
//!
//! Consensus tasks (the write batcher) stop last: the gRPC server drains
//! its in-flight calls after the shutdown token fires, and those calls
//! may still write.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub struct Tasks {
    /// Each task returns whether it is a consensus task.
    set: JoinSet<bool>,
    stop: CancellationToken,
    /// Cancelled once every other task has ended.
    consensus_stop: CancellationToken,
    others: usize,
}

impl Tasks {
    pub fn new(stop: CancellationToken) -> Self {
        Tasks {
            set: JoinSet::new(),
            stop,
            consensus_stop: CancellationToken::new(),
            others: 0,
        }
    }

    /// The shutdown token every task watches.
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task`, which must return once the shutdown token is cancelled
    /// (it may first finish what it has in hand, e.g. drain calls).
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.others += 1;
        self.start(name, false, task);
    }

    /// Runs a consensus task: `task` gets a token that is cancelled only
    /// once every other task has ended.
    pub fn spawn_consensus<F>(
        &mut self,
        name: &'static str,
        task: impl FnOnce(CancellationToken) -> F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.consensus_stop.clone());
        self.start(name, true, fut);
    }

    fn start(
        &mut self,
        name: &'static str,
        consensus: bool,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        self.set.spawn(
            async move {
                task.await;
                tracing::debug!("task stopped");
                consensus
            }
            .instrument(tracing::info_span!("task", name)),
        );
    }

    /// Runs `tick` every `period` until shutdown; a tick in progress
    /// finishes before the task stops.
    pub fn every<F, Fut>(&mut self, name: &'static str, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stop = self.token();
        self.spawn(name, async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(period) => {}
                }
                tick().await;
            }
        });
    }

    /// Cancels the token and waits up to `limit` for the tasks, then stops
    /// the consensus tasks the same way; tasks still running after their
    /// `limit` are aborted.
    pub async fn shutdown(mut self, limit: Duration) {
        self.stop.cancel();
        let mut others = self.others;
        let services = async {
            while others > 0 {
                match self.set.join_next().await {
                    Some(Ok(false)) | Some(Err(_)) => others -= 1,
                    Some(Ok(true)) => {}
                    None => break,
                }
            }
        };
        let services_done = tokio::time::timeout(limit, services).await.is_ok();
        self.consensus_stop.cancel();
        let rest_done = services_done && {
            let set = &mut self.set;
            let rest = async { while set.join_next().await.is_some() {} };
            tokio::time::timeout(limit, rest).await.is_ok()
        };
        if !rest_done {
            tracing::warn!("tasks still running after {limit:?}: aborted");
            self.set.abort_all();
        }
    }
}
