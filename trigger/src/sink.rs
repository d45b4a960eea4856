//! The controllers as the [`Sink`]: events go in one `TriggerControl/
//! Submit` call, answered after the Raft commit, through the shared client
//! (failover between controllers, the same request id on every attempt).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nubo_client::Client;
use nubo_proto::v1 as pb;
use tonic::Code;

use crate::{Event, Sink, SinkError};

pub struct ControllerSink {
    pub client: Arc<Client>,
    /// Events the controllers already had (a batch read again after a
    /// crash or a rebalance, with the same boundaries).
    pub duplicates: AtomicU64,
}

impl ControllerSink {
    pub fn new(client: Arc<Client>) -> ControllerSink {
        ControllerSink {
            client,
            duplicates: AtomicU64::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Sink for ControllerSink {
    async fn accept(&self, events: &[Event]) -> Result<(), SinkError> {
        let req = pb::SubmitRequest {
            events: events
                .iter()
                .map(|e| pb::SubmitEvent {
                    id: e.id.clone(),
                    function_name: e.function.clone(),
                    qualifier: e.qualifier.clone(),
                    payload: e.payload.clone(),
                    ordering_key: e.ordering_key.clone(),
                })
                .collect(),
        };
        let res = self
            .client
            .call(|c| {
                let req = req.clone();
                async move { c.trigger_control().submit(req).await }
            })
            .await;
        match res {
            Ok(r) => {
                let d = r.into_inner().duplicate.iter().filter(|d| **d).count() as u64;
                if d > 0 {
                    self.duplicates.fetch_add(d, Ordering::Relaxed);
                    tracing::info!(
                        duplicates = d,
                        "events the controllers already had (re-read after a crash or rebalance)"
                    );
                }
                Ok(())
            }
            Err(s) => Err(classify(&s, events)),
        }
    }
}

/// What a refusal means for the source: retry later, or never.
fn classify(s: &tonic::Status, events: &[Event]) -> SinkError {
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated => SinkError::Refused {
            id: events.first().map(|e| e.id.clone()).unwrap_or_default(),
            reason: format!("{:?}: {}", s.code(), s.message()),
        },
        _ => SinkError::Unavailable(format!("{:?}: {}", s.code(), s.message())),
    }
}
