//! The dead-letter queue and the async queue's status, as the API serves
//! them: reads of the replicated queues, and redrive / purge writes.

use nubo_proto::v1 as pb;
use nubo_proto::Reason;

use crate::clock::now_ms;
use crate::error::{ApiError, RegistryError};
use crate::events::dispatcher::Dispatcher;
use crate::registry::model::Command;

fn record_pb(d: &crate::registry::asyncq::DeadLetter) -> pb::DeadLetterRecord {
    pb::DeadLetterRecord {
        request_id: d.request_id.clone(),
        function_name: d.function.clone(),
        qualifier: d.qualifier.clone(),
        payload: d.payload.clone().into_bytes(),
        condition: d.condition.as_str().into(),
        attempts: d.attempts,
        error_type: d.error_type.clone(),
        error_message: d.error_message.clone(),
        first_attempt_ms: d.first_attempt_ms,
        last_attempt_ms: d.last_attempt_ms,
        enqueued_ms: d.enqueued_ms,
        dead_lettered_ms: d.dead_lettered_ms,
    }
}

impl Dispatcher {
    /// A valid name of a function that exists (on this node's registry).
    fn existing_function(&self, name: &str) -> Result<(), ApiError> {
        crate::registry::validate::function_name(name)?;
        self.node
            .with_registry(|reg| reg.function(name).map(|_| ()))?;
        Ok(())
    }

    pub async fn list_dead_letters(
        &self,
        r: pb::DeadLettersRequest,
    ) -> Result<pb::ListDeadLettersResponse, ApiError> {
        crate::registry::validate::function_name(&r.function_name)?;
        if !r.stale_ok {
            self.node.linearizable_read().await?;
        }
        self.node.with_registry(|reg| {
            reg.function(&r.function_name)?;
            Ok(pb::ListDeadLettersResponse {
                records: reg
                    .queues
                    .dlq
                    .get(&r.function_name)
                    .map(|q| q.iter().map(record_pb).collect())
                    .unwrap_or_default(),
                dropped: reg
                    .queues
                    .dlq_dropped
                    .get(&r.function_name)
                    .copied()
                    .unwrap_or(0),
            })
        })
    }

    /// `rid` is the client's request id: a retried call (its first attempt
    /// unanswered, maybe applied) moves the dead letters once, and answers
    /// the first attempt's count.
    pub async fn redrive_dead_letters(
        &self,
        r: pb::RedriveDeadLettersRequest,
        rid: Option<String>,
    ) -> Result<pb::CountResponse, ApiError> {
        crate::registry::validate::function_name(&r.function_name)?;
        if r.request_ids.is_empty() && !r.all {
            return Err(RegistryError::invalid(
                "name the dead letters to redrive (request ids) or ask for all",
            )
            .with_reason(Reason::RedriveNeedsIds)
            .into());
        }
        self.existing_function(&r.function_name)?;
        let ids = (!r.all).then_some(r.request_ids);
        let out = self
            .node
            .write_with_id(
                Command::DlqRedrive {
                    function: r.function_name,
                    ids,
                    now_ms: now_ms(),
                },
                rid,
            )
            .await?;
        self.wake.notify_one();
        Ok(pb::CountResponse {
            count: count_of(out),
        })
    }

    /// `rid` as for [`redrive_dead_letters`](Self::redrive_dead_letters).
    pub async fn purge_dead_letters(
        &self,
        r: pb::DeadLettersRequest,
        rid: Option<String>,
    ) -> Result<pb::CountResponse, ApiError> {
        self.existing_function(&r.function_name)?;
        let out = self
            .node
            .write_with_id(
                Command::DlqPurge {
                    function: r.function_name,
                },
                rid,
            )
            .await?;
        Ok(pb::CountResponse {
            count: count_of(out),
        })
    }

    pub async fn async_status(
        &self,
        r: pb::DeadLettersRequest,
    ) -> Result<pb::AsyncStatusResponse, ApiError> {
        crate::registry::validate::function_name(&r.function_name)?;
        if !r.stale_ok {
            self.node.linearizable_read().await?;
        }
        // Counted by the leader's dispatcher: asked there (None if no
        // leader answers, or from a follower when a stale read will do).
        let in_flight = if r.stale_ok && !self.node.is_leader() {
            None
        } else {
            match self
                .node
                .submit(crate::raft::node::ForwardRequest::AsyncInFlight {
                    function: r.function_name.clone(),
                })
                .await
            {
                Ok(Ok(crate::registry::model::Outcome::Count(n))) => Some(n),
                _ => None,
            }
        };
        let now = now_ms();
        self.node.with_registry(|reg| {
            reg.function(&r.function_name)?;
            let q = &reg.queues;
            let mine = q.events.values().filter(|e| e.function == r.function_name);
            let (mut queued, mut due, mut oldest) = (0u64, 0u64, u64::MAX);
            for e in mine {
                queued += 1;
                // An event waiting behind its ordering key's head is not due.
                due += (e.due_ms <= now && q.is_head(e)) as u64;
                oldest = oldest.min(e.enqueued_ms);
            }
            Ok(pb::AsyncStatusResponse {
                queued,
                due_now: due,
                oldest_event_age_ms: if queued == 0 {
                    0
                } else {
                    now.saturating_sub(oldest)
                },
                dead_letters: q.dlq.get(&r.function_name).map(|d| d.len()).unwrap_or(0) as u64,
                dead_letters_dropped: q.dlq_dropped.get(&r.function_name).copied().unwrap_or(0),
                in_flight,
                running: self.invoker.workers.busy_of(&r.function_name) as u64,
            })
        })
    }
}

impl Dispatcher {
    /// Queue depth and the oldest queued event's age, as Prometheus gauges.
    pub fn async_gauges(&self) -> String {
        let now = now_ms();
        self.node.with_registry(|r| {
            let q = &r.queues;
            let oldest = q.events.values().map(|e| e.enqueued_ms).min();
            let dlq: usize = q.dlq.values().map(|d| d.len()).sum();
            format!(
                "# HELP nubo_async_queue_depth Async events waiting (all functions).\n# TYPE nubo_async_queue_depth gauge\nnubo_async_queue_depth {}\n# HELP nubo_async_oldest_event_age_seconds Age of the oldest waiting event.\n# TYPE nubo_async_oldest_event_age_seconds gauge\nnubo_async_oldest_event_age_seconds {}\n# HELP nubo_async_dead_letters Dead letters held (all functions).\n# TYPE nubo_async_dead_letters gauge\nnubo_async_dead_letters {dlq}\n",
                q.events.len(),
                oldest.map(|t| now.saturating_sub(t) as f64 / 1000.0).unwrap_or(0.0)
            )
        })
    }
}

fn count_of(o: crate::registry::model::Outcome) -> u64 {
    match o {
        crate::registry::model::Outcome::Count(n) => n,
        _ => 0,
    }
}
