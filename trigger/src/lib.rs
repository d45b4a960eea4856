//! nubo-trigger: turns outside events (Kafka records, S3 notifications,
//! schedules) into async invocations.
//!
//! Every source follows one contract, so the guarantee "nothing
//! acknowledged upstream is lost" is written once, here:
//!
//! - a [`Source`] pulls a [`Batch`] of [`Event`]s from upstream;
//! - a [`Sink`] (the controllers' durable async path) accepts them, and
//!   returns only once they are committed;
//! - only then does [`run`] call [`Source::ack`] (commit the Kafka offset,
//!   advance the poll cursor, delete the SQS message).
//!
//! Push sources (a webhook) have no batch to pull: their handler calls
//! [`Sink::accept`] itself and answers 2xx only after it returned `Ok`.
//!
//! Event ids are derived from the event's position upstream (e.g.
//! `topic/partition/offset`), so a redelivery after a crash maps to the same
//! id and the controller enqueues it once.
//!
//! Sources live in modules of their own as their issues land: [`kafka`]
//! now; `s3` (webhook, listen, poll, sqs) and `schedule` next.
//! [`service`] is the trigger role: it follows the mappings the
//! controllers hold and runs a source for each; [`sink`] is the
//! controllers' side of the contract.

pub mod kafka;
pub mod service;
pub mod sink;

/// A failpoint (`NUBO_FAILPOINTS=name=exit`), see `nubo_proto::failpoint`.
pub async fn failpoint(name: &str) {
    nubo_proto::failpoint::hit(name).await
}

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// One event for one function, as the function will receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Stable across redeliveries of the same upstream event.
    pub id: String,
    pub function: String,
    /// `$LATEST`, a version number or an alias.
    pub qualifier: String,
    /// The JSON document the handler gets.
    pub payload: Vec<u8>,
    /// Events of one function with the same key run one at a time, in
    /// submission order (a Kafka partition's batches); empty: no order.
    pub ordering_key: String,
}

/// What a source pulled, and what it needs to acknowledge it.
#[derive(Debug)]
pub struct Batch<A> {
    pub events: Vec<Event>,
    /// The source's own acknowledgement token (offsets, a cursor, receipt
    /// handles), handed back to [`Source::ack`] after the sink accepted.
    pub ack: A,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The controllers cannot take events now (no quorum, unreachable,
    /// queue full): nothing was acknowledged upstream; retry later.
    #[error("controllers unavailable: {0}")]
    Unavailable(String),
    /// This event can never be accepted as it is (unknown function, over
    /// the payload limit): retrying the same bytes cannot help.
    #[error("event {id} refused: {reason}")]
    Refused { id: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("receiving from {source_name}: {message}")]
    Receive {
        source_name: String,
        message: String,
    },
    #[error("acknowledging to {source_name}: {message}")]
    Ack {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {error}")]
    Sink {
        source_name: String,
        error: SinkError,
    },
}

/// Where events go: durable acceptance by the controllers.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Returns `Ok` only when every event of `events` is durably accepted.
    /// Accepting an id again is harmless (the controller deduplicates), so
    /// a partial failure may be retried whole.
    async fn accept(&self, events: &[Event]) -> Result<(), SinkError>;
}

/// A pull source: Kafka, an S3 poll, an SQS queue, a schedule.
#[async_trait::async_trait]
pub trait Source: Send {
    type Ack: Send;

    /// For logs and metric labels, e.g. `kafka:<mapping id>`.
    fn name(&self) -> &str;

    /// The next batch, waiting for one; `Ok(None)` when the source ended.
    async fn next_batch(&mut self) -> Result<Option<Batch<Self::Ack>>, SourceError>;

    /// Acknowledges a batch upstream. Called only after [`Sink::accept`]
    /// returned `Ok` for all of its events.
    async fn ack(&mut self, ack: Self::Ack) -> Result<(), SourceError>;
}

/// The counters every source emits (received, sent, errors by stage,
/// discarded), the same for every kind so dashboards compare them.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub errors_receive: AtomicU64,
    pub errors_accept: AtomicU64,
    pub errors_ack: AtomicU64,
    /// Events the source dropped on purpose (e.g. filtered out). `run`
    /// itself never discards.
    pub discarded: AtomicU64,
}

impl Counters {
    /// Prometheus text for this source, labelled `source="<name>"`.
    pub fn render(&self, source: &str, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, v) in [
            ("received", get(&self.received)),
            ("sent", get(&self.sent)),
            ("acked", get(&self.acked)),
            ("discarded", get(&self.discarded)),
        ] {
            let _ = writeln!(
                out,
                "nubo_trigger_events_{name}_total{{source=\"{source}\"}} {v}"
            );
        }
        for (stage, v) in [
            ("receive", get(&self.errors_receive)),
            ("accept", get(&self.errors_accept)),
            ("ack", get(&self.errors_ack)),
        ] {
            let _ = writeln!(
                out,
                "nubo_trigger_errors_total{{source=\"{source}\",stage=\"{stage}\"}} {v}"
            );
        }
    }
}

/// How [`run`] waits between retries of an unavailable sink.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// Drives a pull source until it ends, fails, or `shutdown` is cancelled:
/// each batch is offered to `sink` until accepted (backing off while the
/// sink is unavailable), and only then acknowledged upstream. A refused
/// event stops the source with that error and its batch unacknowledged, so
/// nothing is lost: the mapping shows the error and the upstream keeps the
/// event. Returns `Ok` on shutdown or at the source's end.
pub async fn run<S: Source>(
    source: &mut S,
    sink: &dyn Sink,
    counters: &Counters,
    backoff: Backoff,
    shutdown: &CancellationToken,
) -> Result<(), SourceError> {
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            b = source.next_batch() => b,
        };
        let batch = match batch {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(e) => {
                counters.errors_receive.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let n = batch.events.len() as u64;
        counters.received.fetch_add(n, Ordering::Relaxed);
        let mut wait = backoff.first;
        loop {
            match sink.accept(&batch.events).await {
                Ok(()) => break,
                Err(SinkError::Unavailable(m)) => {
                    counters.errors_accept.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(source = source.name(), "sink unavailable, retrying: {m}");
                    tokio::select! {
                        // Unacknowledged: the upstream redelivers after a restart.
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(backoff.max);
                }
                Err(error) => {
                    counters.errors_accept.fetch_add(1, Ordering::Relaxed);
                    return Err(SourceError::Sink {
                        source_name: source.name().to_string(),
                        error,
                    });
                }
            }
        }
        counters.sent.fetch_add(n, Ordering::Relaxed);
        if let Err(e) = source.ack(batch.ack).await {
            // Accepted but not acknowledged: the upstream redelivers, and
            // the stable event ids make the redelivery a no-op.
            counters.errors_ack.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        counters.acked.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A source over a list of batches; records what it acknowledged and
    /// what the sink held at that moment.
    struct ListSource {
        batches: VecDeque<Vec<Event>>,
        next_ack: u64,
        acked: Vec<(u64, usize)>,
        sink_seen: Arc<Mutex<Vec<Event>>>,
        fail_ack: bool,
    }

    #[async_trait::async_trait]
    impl Source for ListSource {
        type Ack = u64;
        fn name(&self) -> &str {
            "list"
        }
        async fn next_batch(&mut self) -> Result<Option<Batch<u64>>, SourceError> {
            Ok(self.batches.pop_front().map(|events| {
                self.next_ack += 1;
                Batch {
                    events,
                    ack: self.next_ack,
                }
            }))
        }
        async fn ack(&mut self, ack: u64) -> Result<(), SourceError> {
            if self.fail_ack {
                return Err(SourceError::Ack {
                    source_name: "list".into(),
                    message: "commit failed".into(),
                });
            }
            let held = self.sink_seen.lock().unwrap().len();
            self.acked.push((ack, held));
            Ok(())
        }
    }

    /// A sink that is unavailable for its first `down` calls, refuses
    /// events whose id starts with "bad", and keeps what it accepted.
    struct FlakySink {
        down: Mutex<u32>,
        accepted: Arc<Mutex<Vec<Event>>>,
    }

    #[async_trait::async_trait]
    impl Sink for FlakySink {
        async fn accept(&self, events: &[Event]) -> Result<(), SinkError> {
            {
                let mut d = self.down.lock().unwrap();
                if *d > 0 {
                    *d -= 1;
                    return Err(SinkError::Unavailable("no quorum".into()));
                }
            }
            if let Some(bad) = events.iter().find(|e| e.id.starts_with("bad")) {
                return Err(SinkError::Refused {
                    id: bad.id.clone(),
                    reason: "function not found".into(),
                });
            }
            self.accepted.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    fn ev(id: &str) -> Event {
        Event {
            id: id.into(),
            function: "f".into(),
            qualifier: "$LATEST".into(),
            payload: b"{}".to_vec(),
            ordering_key: String::new(),
        }
    }

    fn setup(batches: Vec<Vec<Event>>, down: u32) -> (ListSource, FlakySink) {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        (
            ListSource {
                batches: batches.into(),
                next_ack: 0,
                acked: vec![],
                sink_seen: accepted.clone(),
                fail_ack: false,
            },
            FlakySink {
                down: Mutex::new(down),
                accepted,
            },
        )
    }

    const FAST: Backoff = Backoff {
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    /// Every batch is acknowledged only after the sink holds all its
    /// events, also when the sink was unavailable first.
    #[tokio::test]
    async fn acks_only_after_the_sink_accepted() {
        let (mut src, sink) = setup(vec![vec![ev("a"), ev("b")], vec![ev("c")]], 3);
        let c = Counters::default();
        run(&mut src, &sink, &c, FAST, &CancellationToken::new())
            .await
            .unwrap();
        // (ack token, events the sink held when it was acknowledged)
        assert_eq!(src.acked, vec![(1, 2), (2, 3)]);
        assert_eq!(c.received.load(Ordering::Relaxed), 3);
        assert_eq!(c.sent.load(Ordering::Relaxed), 3);
        assert_eq!(c.acked.load(Ordering::Relaxed), 3);
        assert_eq!(c.errors_accept.load(Ordering::Relaxed), 3);
    }

    /// A refused event stops the source with the reason and leaves its
    /// batch unacknowledged: the upstream keeps it.
    #[tokio::test]
    async fn a_refused_event_is_never_acknowledged() {
        let (mut src, sink) = setup(vec![vec![ev("a")], vec![ev("bad-1"), ev("x")]], 0);
        let c = Counters::default();
        let e = run(&mut src, &sink, &c, FAST, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("bad-1"), "{e}");
        assert!(e.to_string().contains("function not found"), "{e}");
        assert_eq!(src.acked, vec![(1, 1)]);
        assert_eq!(c.acked.load(Ordering::Relaxed), 1);
    }

    /// Shutdown while the sink is down returns without acknowledging.
    #[tokio::test]
    async fn shutdown_while_unavailable_acknowledges_nothing() {
        let (mut src, sink) = setup(vec![vec![ev("a")]], u32::MAX);
        let c = Counters::default();
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            stopper.cancel();
        });
        tokio::time::timeout(
            Duration::from_secs(5),
            run(&mut src, &sink, &c, FAST, &stop),
        )
        .await
        .expect("run stops on shutdown")
        .unwrap();
        assert!(src.acked.is_empty());
        assert_eq!(c.sent.load(Ordering::Relaxed), 0);
    }

    /// A failed acknowledgement is reported and counted; the accepted
    /// events stay accepted (a redelivery dedupes by id).
    #[tokio::test]
    async fn a_failed_ack_is_an_error_after_acceptance() {
        let (mut src, sink) = setup(vec![vec![ev("a")]], 0);
        src.fail_ack = true;
        let c = Counters::default();
        let e = run(&mut src, &sink, &c, FAST, &CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::Ack { .. }));
        assert_eq!(sink.accepted.lock().unwrap().len(), 1);
        assert_eq!(c.errors_ack.load(Ordering::Relaxed), 1);
        let mut text = String::new();
        c.render("list", &mut text);
        assert!(text.contains("nubo_trigger_events_sent_total{source=\"list\"} 1"));
        assert!(text.contains("nubo_trigger_errors_total{source=\"list\",stage=\"ack\"} 1"));
    }
}
