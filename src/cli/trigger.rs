//! `nubo trigger`: event source mappings (Kafka topics that run a
//! function), and `nubo trigger serve`, the role that runs them.

use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::{json, Value};

use super::render::{render_kv, render_table, rfc3339_ms, Out};
use super::split_target;

#[derive(Debug, clap::Subcommand)]
pub enum TriggerCommand {
    /// Create a trigger: records of a source run FUNCTION[:QUALIFIER].
    #[command(subcommand)]
    Create(CreateCommand),
    /// List triggers (of one function, or all).
    List { function: Option<String> },
    /// Show a trigger: state, last result, partitions with lag.
    Get { id: String },
    /// Start consuming again from the committed offsets.
    Enable { id: String },
    /// Stop consuming (offsets stay committed).
    Disable { id: String },
    /// Change a trigger's settings (the others are kept).
    Update {
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete a trigger (its consumers stop within a second or so).
    Delete { id: String },
    /// Run a trigger instance: consume every enabled mapping, submit
    /// batches to the controllers, commit offsets after they accepted.
    Serve(crate::roles::TriggerArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum CreateCommand {
    /// Lambda's self-managed Kafka event source mapping.
    Kafka {
        /// FUNCTION or FUNCTION:QUALIFIER (a version or an alias).
        target: String,
        /// HOST:PORT[,HOST:PORT...]
        #[arg(long, required = true)]
        brokers: String,
        /// A topic to read; repeat for several.
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// Consumer group (default: the trigger's id).
        #[arg(long)]
        group: Option<String>,
        /// latest (default), earliest, or timestamp:MS.
        #[arg(long, default_value = "latest")]
        starting_position: String,
        #[command(flatten)]
        settings: Settings,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
}

/// What create and update share.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Records per batch, 1-10000 (default 100).
    #[arg(long)]
    batch_size: Option<u32>,
    /// How long a partition's batch may wait to fill, 0-300000 ms
    /// (default 500).
    #[arg(long)]
    batch_window_ms: Option<u32>,
    /// partition (default: a partition's batches run one at a time, in
    /// order) or none.
    #[arg(long)]
    ordering: Option<String>,
    /// A function, or kafka://HOST:PORT/TOPIC, for batches that failed
    /// all their attempts.
    #[arg(long)]
    on_failure: Option<String>,
}

fn trigger_json(t: &pb::Trigger) -> Value {
    let spec = t.spec.clone().unwrap_or_default();
    let k = spec.kafka.clone().unwrap_or_default();
    json!({
        "id": t.id,
        "function": spec.function_name,
        "qualifier": spec.qualifier,
        "source": "kafka",
        "brokers": k.brokers,
        "topics": k.topics,
        "group": t.group,
        "starting_position": k.starting_position,
        "ordering": k.ordering,
        "batch_size": spec.batch_size,
        "batch_window_ms": spec.batch_window_ms,
        "on_failure": spec.on_failure,
        "enabled": spec.enabled,
        "state": t.state,
        "state_reason": t.state_reason,
        "last_result": t.last_result,
        "partitions": t.partitions.iter().map(|p| json!({
            "topic": p.topic,
            "partition": p.partition,
            "committed": p.committed,
            "high_watermark": p.high_watermark,
            "lag": p.lag,
        })).collect::<Vec<_>>(),
        "instance": t.instance,
        "reported": if t.reported_ms > 0 { rfc3339_ms(t.reported_ms) } else { String::new() },
        "created": rfc3339_ms(t.created_ms),
        "revision": t.revision,
    })
}

fn show(out: &Out, t: &pb::Trigger) {
    if out.json() {
        out.print_json(&trigger_json(t));
        return;
    }
    let spec = t.spec.clone().unwrap_or_default();
    let k = spec.kafka.clone().unwrap_or_default();
    let target = if spec.qualifier.is_empty() {
        spec.function_name.clone()
    } else {
        format!("{}:{}", spec.function_name, spec.qualifier)
    };
    let mut kv = vec![
        ("id".to_string(), t.id.clone()),
        ("function".into(), target),
        (
            "state".into(),
            if t.state_reason.is_empty() {
                t.state.clone()
            } else {
                format!("{} ({})", t.state, t.state_reason)
            },
        ),
        ("last result".into(), t.last_result.clone()),
        ("brokers".into(), k.brokers.join(",")),
        ("topics".into(), k.topics.join(",")),
        ("group".into(), t.group.clone()),
        ("starting position".into(), k.starting_position.clone()),
        ("ordering".into(), k.ordering.clone()),
        (
            "batch".into(),
            format!(
                "{} records or {} ms",
                spec.batch_size.unwrap_or_default(),
                spec.batch_window_ms.unwrap_or_default()
            ),
        ),
    ];
    if !spec.on_failure.is_empty() {
        kv.push(("on failure".into(), spec.on_failure.clone()));
    }
    out.print(&render_kv(&kv));
    if !t.partitions.is_empty() {
        let rows: Vec<Vec<String>> = t
            .partitions
            .iter()
            .map(|p| {
                vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.committed.to_string(),
                    p.high_watermark.to_string(),
                    p.lag.to_string(),
                ]
            })
            .collect();
        out.print(&render_table(
            &["TOPIC", "PARTITION", "COMMITTED", "HIGH WATERMARK", "LAG"],
            &rows,
        ));
    }
}

async fn get(client: &Client, id: &str) -> anyhow::Result<pb::Trigger> {
    let req = pb::GetTriggerRequest { id: id.to_string() };
    Ok(client
        .call(|c| {
            let req = req.clone();
            async move { c.triggers().get_trigger(req).await }
        })
        .await?
        .into_inner())
}

fn apply(spec: &mut pb::TriggerSpec, s: &Settings) {
    if let Some(b) = s.batch_size {
        spec.batch_size = Some(b);
    }
    if let Some(w) = s.batch_window_ms {
        spec.batch_window_ms = Some(w);
    }
    if let Some(o) = &s.ordering {
        if let Some(k) = spec.kafka.as_mut() {
            k.ordering = o.clone();
        }
    }
    if let Some(f) = &s.on_failure {
        spec.on_failure = f.clone();
    }
}

async fn update(
    client: &Client,
    id: &str,
    change: impl Fn(&mut pb::TriggerSpec),
) -> anyhow::Result<pb::Trigger> {
    let t = get(client, id).await?;
    let mut spec = t.spec.unwrap_or_default();
    change(&mut spec);
    let req = pb::UpdateTriggerRequest {
        id: id.to_string(),
        spec: Some(spec),
        expected_revision: t.revision,
    };
    Ok(client
        .call(|c| {
            let req = req.clone();
            async move { c.triggers().update_trigger(req).await }
        })
        .await?
        .into_inner())
}

pub(super) async fn run(client: &Client, out: &Out, cmd: TriggerCommand) -> anyhow::Result<()> {
    match cmd {
        TriggerCommand::Create(CreateCommand::Kafka {
            target,
            brokers,
            topics,
            group,
            starting_position,
            settings,
            disabled,
        }) => {
            let (function_name, qualifier) = split_target(&target);
            let mut spec = pb::TriggerSpec {
                function_name,
                qualifier,
                kafka: Some(pb::KafkaSource {
                    brokers: vec![brokers],
                    topics,
                    group: group.unwrap_or_default(),
                    starting_position,
                    ordering: String::new(),
                }),
                enabled: !disabled,
                ..Default::default()
            };
            apply(&mut spec, &settings);
            let req = pb::CreateTriggerRequest { spec: Some(spec) };
            let t = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.triggers().create_trigger(req).await }
                })
                .await?
                .into_inner();
            show(out, &t);
        }
        TriggerCommand::List { function } => {
            let req = pb::ListTriggersRequest {
                function_name: function.unwrap_or_default(),
            };
            let r = client
                .call(|c| {
                    let req = req.clone();
                    async move { c.triggers().list_triggers(req).await }
                })
                .await?
                .into_inner();
            if out.json() {
                out.print_json(&json!({
                    "triggers": r.triggers.iter().map(trigger_json).collect::<Vec<_>>()
                }));
            } else {
                let rows: Vec<Vec<String>> = r
                    .triggers
                    .iter()
                    .map(|t| {
                        let spec = t.spec.clone().unwrap_or_default();
                        let k = spec.kafka.clone().unwrap_or_default();
                        let lag: i64 = t.partitions.iter().map(|p| p.lag).sum();
                        vec![
                            t.id.clone(),
                            spec.function_name.clone(),
                            format!("kafka {}", k.topics.join(",")),
                            t.state.clone(),
                            lag.to_string(),
                            t.state_reason.clone(),
                        ]
                    })
                    .collect();
                out.print(&render_table(
                    &["ID", "FUNCTION", "SOURCE", "STATE", "LAG", "REASON"],
                    &rows,
                ));
            }
        }
        TriggerCommand::Get { id } => show(out, &get(client, &id).await?),
        TriggerCommand::Enable { id } => {
            show(out, &update(client, &id, |s| s.enabled = true).await?)
        }
        TriggerCommand::Disable { id } => {
            show(out, &update(client, &id, |s| s.enabled = false).await?)
        }
        TriggerCommand::Update { id, settings } => {
            show(out, &update(client, &id, |s| apply(s, &settings)).await?)
        }
        TriggerCommand::Delete { id } => {
            let req = pb::GetTriggerRequest { id: id.clone() };
            client
                .call(|c| {
                    let req = req.clone();
                    async move { c.triggers().delete_trigger(req).await }
                })
                .await?;
            out.done(&format!("deleted trigger {id}"));
        }
        // Answered before a client is made (run_client).
        TriggerCommand::Serve(_) => {
            anyhow::bail!("nubo trigger serve runs as a role, not as a client command")
        }
    }
    Ok(())
}
