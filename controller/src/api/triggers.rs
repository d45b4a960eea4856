//! `nubo.v1.Triggers` (event source mappings, for users with a `deploy`
//! token) and `nubo.v1.TriggerControl` (for trigger instances, with the
//! trigger credential): the mappings to run, the events they produce
//! (into the async queue, answered after the Raft commit), and what the
//! instances report.

use nubo_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{request_id, Api, Internal};
use crate::clock::now_ms;
use crate::error::{ApiError, RegistryError};
use crate::registry::mappings::{self as m, Mapping};
use crate::registry::model::{Command, Outcome};

/// A mapping id: a random UUID-shaped string, as Lambda's (the same form
/// as request ids).
fn new_mapping_id() -> String {
    crate::invoke::new_request_id()
}

/// A spec from the API into a mapping (validation happens in the registry,
/// field by field).
fn from_spec(id: &str, spec: pb::TriggerSpec, now: u64) -> Result<Mapping, ApiError> {
    let k = spec.kafka.ok_or_else(|| {
        RegistryError::invalid("a trigger needs a source: kafka (brokers and topics)")
    })?;
    let brokers = m::broker_list(&k.brokers)?;
    Ok(Mapping {
        id: id.to_string(),
        function: spec.function_name,
        qualifier: spec.qualifier,
        kafka: m::KafkaSpec {
            brokers,
            topics: k.topics,
            group: if k.group.is_empty() {
                id.to_string()
            } else {
                k.group
            },
            starting_position: m::StartingPosition::parse(&k.starting_position)?,
            ordering: m::Ordering::parse(&k.ordering)?,
        },
        batch_size: spec.batch_size.unwrap_or(m::DEFAULT_BATCH_SIZE),
        batch_window_ms: spec.batch_window_ms.unwrap_or(m::DEFAULT_BATCH_WINDOW_MS),
        on_failure: m::OnFailure::parse(&spec.on_failure)?,
        enabled: spec.enabled,
        created_ms: now,
        updated_ms: now,
        revision: String::new(),
    })
}

fn to_spec(x: &Mapping) -> pb::TriggerSpec {
    pb::TriggerSpec {
        function_name: x.function.clone(),
        qualifier: x.qualifier.clone(),
        kafka: Some(pb::KafkaSource {
            brokers: x.kafka.brokers.clone(),
            topics: x.kafka.topics.clone(),
            group: x.kafka.group.clone(),
            starting_position: x.kafka.starting_position.render(),
            ordering: x.kafka.ordering.render().into(),
        }),
        batch_size: Some(x.batch_size),
        batch_window_ms: Some(x.batch_window_ms),
        on_failure: x.on_failure.render(),
        enabled: x.enabled,
    }
}

pub(crate) fn to_pb(x: &Mapping, status: Option<&m::MappingStatus>) -> pb::Trigger {
    let (state, reason) = m::state(x, status);
    let current = status.filter(|s| s.revision == x.revision);
    pb::Trigger {
        id: x.id.clone(),
        spec: Some(to_spec(x)),
        state: state.into(),
        state_reason: reason,
        last_result: status.map(|s| s.last_result.clone()).unwrap_or_default(),
        partitions: current
            .map(|s| {
                s.partitions
                    .iter()
                    .map(|p| pb::PartitionStatus {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        committed: p.committed,
                        high_watermark: p.high_watermark,
                        lag: if p.committed < 0 {
                            p.high_watermark.max(0)
                        } else {
                            (p.high_watermark - p.committed).max(0)
                        },
                    })
                    .collect()
            })
            .unwrap_or_default(),
        created_ms: x.created_ms,
        updated_ms: x.updated_ms,
        revision: x.revision.clone(),
        group: x.kafka.group.clone(),
        instance: status.map(|s| s.instance.clone()).unwrap_or_default(),
        reported_ms: status.map(|s| s.reported_ms).unwrap_or_default(),
    }
}

fn mapping_of(out: Outcome) -> Result<Mapping, ApiError> {
    match out {
        Outcome::Mapping(x) => Ok(*x),
        other => Err(ApiError::Internal(format!(
            "unexpected outcome of a trigger write: {other:?}"
        ))),
    }
}

fn list(api_node: &crate::raft::node::ControllerNode, function: &str) -> pb::ListTriggersResponse {
    api_node.with_registry(|r| pb::ListTriggersResponse {
        triggers: r
            .mappings
            .by_id
            .values()
            .filter(|x| function.is_empty() || x.function == function)
            .map(|x| to_pb(x, m::merged(r.mappings.status.get(&x.id)).as_ref()))
            .collect(),
    })
}

#[tonic::async_trait]
impl pb::triggers_server::Triggers for Api {
    async fn create_trigger(
        &self,
        request: Request<pb::CreateTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Triggers/CreateTrigger");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let spec = request
                .into_inner()
                .spec
                .ok_or_else(|| RegistryError::invalid("a trigger needs a spec"))?;
            let id = new_mapping_id();
            let mapping = from_spec(&id, spec, now_ms())?;
            m::validate(&mapping)?;
            let out = self
                .write(
                    &rid,
                    Command::PutMapping {
                        mapping,
                        create: true,
                        expected_revision: None,
                    },
                )
                .await?;
            Ok(to_pb(&mapping_of(out)?, None))
        })
        .await
    }

    async fn get_trigger(
        &self,
        request: Request<pb::GetTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Triggers/GetTrigger");
        self.run(call, async {
            self.read(false).await?;
            let id = request.into_inner().id;
            self.node.with_registry(|r| {
                r.mappings
                    .by_id
                    .get(&id)
                    .map(|x| to_pb(x, m::merged(r.mappings.status.get(&id)).as_ref()))
                    .ok_or_else(|| m::not_found(&id).into())
            })
        })
        .await
    }

    async fn list_triggers(
        &self,
        request: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Triggers/ListTriggers");
        self.run(call, async {
            self.read(false).await?;
            Ok(list(&self.node, &request.into_inner().function_name))
        })
        .await
    }

    async fn update_trigger(
        &self,
        request: Request<pb::UpdateTriggerRequest>,
    ) -> Result<Response<pb::Trigger>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Triggers/UpdateTrigger");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let r = request.into_inner();
            let spec = r
                .spec
                .ok_or_else(|| RegistryError::invalid("an update needs the trigger's spec"))?;
            let mapping = from_spec(&r.id, spec, now_ms())?;
            m::validate(&mapping)?;
            let out = self
                .write(
                    &rid,
                    Command::PutMapping {
                        mapping,
                        create: false,
                        expected_revision: (!r.expected_revision.is_empty())
                            .then_some(r.expected_revision),
                    },
                )
                .await?;
            let x = mapping_of(out)?;
            Ok(self
                .node
                .with_registry(|reg| to_pb(&x, m::merged(reg.mappings.status.get(&x.id)).as_ref())))
        })
        .await
    }

    async fn delete_trigger(
        &self,
        request: Request<pb::GetTriggerRequest>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        let call = self.authorize(request.metadata(), "/nubo.v1.Triggers/DeleteTrigger");
        self.run(call, async {
            let rid = request_id(request.metadata())?;
            let id = request.into_inner().id;
            self.write(&rid, Command::DeleteMapping { id }).await?;
            Ok(pb::DeleteTriggerResponse {})
        })
        .await
    }
}

#[tonic::async_trait]
impl pb::trigger_control_server::TriggerControl for Internal {
    async fn mappings(
        &self,
        request: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.TriggerControl/Mappings")?;
        // The local view: an instance polls, and a change reaches it on
        // its next poll once this controller applied it.
        Ok(Response::new(list(
            &self.node,
            &request.into_inner().function_name,
        )))
    }

    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.TriggerControl/Submit")?;
        let events = request.into_inner().events;
        self.dispatcher
            .enqueue_batch(events)
            .await
            .map(|duplicate| Response::new(pb::SubmitResponse { duplicate }))
            .map_err(crate::api::to_status)
    }

    async fn report(
        &self,
        request: Request<pb::ReportRequest>,
    ) -> Result<Response<pb::ReportResponse>, Status> {
        self.authorize(request.metadata(), "/nubo.v1.TriggerControl/Report")?;
        let r = request.into_inner();
        let now = now_ms();
        let reports = r
            .mappings
            .into_iter()
            .map(|x| m::MappingStatus {
                id: x.id,
                revision: x.revision,
                failed: x.failed,
                reason: x.reason,
                last_result: x.last_result,
                partitions: x
                    .partitions
                    .into_iter()
                    .map(|p| m::PartitionStatus {
                        topic: p.topic,
                        partition: p.partition,
                        committed: p.committed,
                        high_watermark: p.high_watermark,
                    })
                    .collect(),
                instance: r.instance.clone(),
                reported_ms: now,
            })
            .collect();
        self.node
            .write_with_id(Command::ReportMappings { reports }, None)
            .await
            .map_err(crate::api::to_status)?;
        Ok(Response::new(pb::ReportResponse {}))
    }
}
