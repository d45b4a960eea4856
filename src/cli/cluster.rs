//! `nubo cluster`: the group of controllers and the workers they know.

use nubo_client::Client;
use nubo_proto::v1 as pb;
use serde_json::{json, Value};

use super::render::{render_kv, render_table, Out};

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Show the leader, log indexes and the members.
    Status,
    /// Add a controller as a learner (it replicates but does not vote).
    Add {
        id: u64,
        /// The new controller's Raft address.
        address: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a controller from the group.
    Remove { id: u64 },
    /// Print the worker credential for NUBO_WORKER_SECRET, computed from the
    /// cluster secret (no server call): workers hold it instead of the
    /// cluster secret, so a worker host cannot take part in Raft.
    WorkerSecret {
        /// The controllers' cluster secret.
        #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: String,
    },
    /// Print the trigger credential for NUBO_TRIGGER_SECRET (`nubo trigger
    /// serve`), computed from the cluster secret (no server call).
    TriggerSecret {
        /// The controllers' cluster secret.
        #[arg(long, env = "NUBO_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: String,
    },
}

pub(super) fn print_worker_secret(cluster_secret: &str) -> anyhow::Result<()> {
    println!("{}", nubo_proto::worker_secret(cluster_secret));
    Ok(())
}

pub(super) async fn run(client: &Client, out: &Out, cmd: ClusterCommand) -> anyhow::Result<()> {
    let status = match cmd {
        ClusterCommand::Status => client
            .call(|c| async move { c.cluster().status(pb::ClusterStatusRequest {}).await })
            .await?
            .into_inner(),
        ClusterCommand::Add { id, address } => {
            let req = pb::AddLearnerRequest {
                node_id: id,
                address,
            };
            // Waits for the learner to catch up: may take long.
            client
                .call_long(|c| {
                    let req = req.clone();
                    async move { c.cluster().add_learner(req).await }
                })
                .await?
                .into_inner()
        }
        ClusterCommand::Promote { id } => client
            .call_long(|c| async move {
                c.cluster()
                    .promote_voter(pb::PromoteVoterRequest { node_id: id })
                    .await
            })
            .await?
            .into_inner(),
        // Answered before a client is made (run_client).
        ClusterCommand::WorkerSecret { cluster_secret } => {
            return print_worker_secret(&cluster_secret)
        }
        ClusterCommand::TriggerSecret { cluster_secret } => {
            println!("{}", nubo_proto::trigger_secret(&cluster_secret));
            return Ok(());
        }
        ClusterCommand::Remove { id } => client
            .call_long(|c| async move {
                c.cluster()
                    .remove_node(pb::RemoveNodeRequest { node_id: id })
                    .await
            })
            .await?
            .into_inner(),
    };
    if out.json() {
        out.print_json(&cluster_json(&status));
    } else {
        out.print(&render_cluster(&status));
    }
    Ok(())
}

pub fn cluster_json(s: &pb::ClusterStatusResponse) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "address": n.address,
                "role": n.role,
                "is_leader": n.is_leader,
                "health": n.health,
                "matched_index": n.matched_index,
            })
        })
        .collect();
    json!({
        "node_id": s.node_id,
        "leader_id": s.leader_id,
        "leader_address": s.leader_address,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied_index": s.last_applied_index,
        "commit_index": s.commit_index,
        "nodes": nodes,
        "state": s.state,
        "workers": s.workers.iter().map(|w| json!({
            "id": w.id,
            "zone": w.zone,
            "address": w.address,
            "memory_mb": w.memory_mb,
            "used_memory_mb": w.used_memory_mb,
            "max_sandboxes": w.max_sandboxes,
            "sandboxes": w.sandboxes,
            "warm_idle": w.warm_idle,
            "busy": w.busy,
            "health": w.health,
            "last_heartbeat_ms_ago": w.last_heartbeat_ms_ago,
        })).collect::<Vec<_>>(),
    })
}

fn render_cluster(s: &pb::ClusterStatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else if s.leader_address.is_empty() {
        s.leader_id.to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_address)
    };
    let mut text = render_kv(&[
        ("answered_by".into(), s.node_id.to_string()),
        ("state".into(), s.state.clone()),
        ("leader".into(), leader),
        ("term".into(), s.term.to_string()),
        ("last_log_index".into(), s.last_log_index.to_string()),
        ("commit_index".into(), s.commit_index.to_string()),
        (
            "last_applied_index".into(),
            s.last_applied_index.to_string(),
        ),
    ]);
    text.push('\n');
    let workers_table = if s.workers.is_empty() {
        "no workers registered with this controller (start one: `nubo worker --zone Z --controllers ...`)\n".to_string()
    } else {
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.zone.clone(),
                    w.address.clone(),
                    format!("{}/{} MB", w.used_memory_mb, w.memory_mb),
                    format!("{}/{}", w.sandboxes, w.max_sandboxes),
                    w.warm_idle.to_string(),
                    w.busy.to_string(),
                    w.health.clone(),
                    format!("{} ms ago", w.last_heartbeat_ms_ago),
                ]
            })
            .collect();
        render_table(
            &[
                "WORKER",
                "ZONE",
                "ADDRESS",
                "MEMORY",
                "SANDBOXES",
                "WARM",
                "BUSY",
                "HEALTH",
                "HEARD",
            ],
            &rows,
        )
    };
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.address.clone(),
                n.role.clone(),
                if n.is_leader { "yes" } else { "no" }.into(),
                n.health.clone(),
                n.matched_index.to_string(),
            ]
        })
        .collect();
    text.push_str(&render_table(
        &["ID", "ADDRESS", "ROLE", "LEADER", "HEALTH", "MATCHED"],
        &rows,
    ));
    text.push('\n');
    text.push_str(&workers_table);
    text
}
