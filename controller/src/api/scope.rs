//! Who may call what: one table from every gRPC method the controller
//! serves to the credential it needs, looked up by every handler (through
//! `Api::authorize` / `Internal::authorize`). A method missing from the
//! table is refused, and a unit test fails when the protos and the table
//! disagree, so a new RPC cannot become an open endpoint by omission.

use nubo_proto::Reason;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::api::{hash_token, Api, Internal};
use crate::error::ApiError;
use crate::registry::model::Scope;

/// The credential a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A bearer token of at least this scope.
    Token(Scope),
    /// The cluster secret (controller to controller).
    Cluster,
    /// The worker credential (or the cluster secret: a worker started
    /// with it derives the credential).
    Worker,
    /// The trigger credential (or the cluster secret).
    Trigger,
}

/// One method: its gRPC path, the name it has in metrics and messages,
/// and what it needs.
pub struct Rpc {
    pub path: &'static str,
    pub name: &'static str,
    pub access: Access,
}

const fn rpc(path: &'static str, name: &'static str, access: Access) -> Rpc {
    Rpc { path, name, access }
}

use Access::{Cluster, Token, Trigger, Worker};
use Scope::{Admin, Deploy, Invoke};

/// Every method the controller serves. An `invoke` token may only invoke
/// (Lambda's `lambda:InvokeFunction` grants no GetFunction): reading a
/// configuration, whose environment often holds secrets, or listing
/// functions, versions and aliases needs `deploy`.
pub const RPCS: &[Rpc] = &[
    rpc(
        "/nubo.v1.Functions/CreateFunction",
        "CreateFunction",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/GetFunction",
        "GetFunction",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/ListFunctions",
        "ListFunctions",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/UpdateFunctionCode",
        "UpdateFunctionCode",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/UpdateFunctionConfiguration",
        "UpdateFunctionConfiguration",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/DeleteFunction",
        "DeleteFunction",
        Token(Deploy),
    ),
    rpc("/nubo.v1.Functions/GetCode", "GetCode", Token(Deploy)),
    rpc(
        "/nubo.v1.Functions/PublishVersion",
        "PublishVersion",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/ListVersionsByFunction",
        "ListVersionsByFunction",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/CreateAlias",
        "CreateAlias",
        Token(Deploy),
    ),
    rpc("/nubo.v1.Functions/GetAlias", "GetAlias", Token(Deploy)),
    rpc(
        "/nubo.v1.Functions/UpdateAlias",
        "UpdateAlias",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/DeleteAlias",
        "DeleteAlias",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Functions/ListAliases",
        "ListAliases",
        Token(Deploy),
    ),
    // Named ClusterStatus in metrics, as before the table.
    rpc("/nubo.v1.Cluster/Status", "ClusterStatus", Token(Deploy)),
    rpc("/nubo.v1.Cluster/AddLearner", "AddLearner", Token(Admin)),
    rpc(
        "/nubo.v1.Cluster/PromoteVoter",
        "PromoteVoter",
        Token(Admin),
    ),
    rpc("/nubo.v1.Cluster/RemoveNode", "RemoveNode", Token(Admin)),
    rpc("/nubo.v1.Invocations/Invoke", "Invoke", Token(Invoke)),
    rpc("/nubo.v1.Invocations/GetLogs", "GetLogs", Token(Deploy)),
    rpc(
        "/nubo.v1.Invocations/ListDeadLetters",
        "ListDeadLetters",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Invocations/RedriveDeadLetters",
        "RedriveDeadLetters",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Invocations/PurgeDeadLetters",
        "PurgeDeadLetters",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Invocations/AsyncStatus",
        "AsyncStatus",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Triggers/CreateTrigger",
        "CreateTrigger",
        Token(Deploy),
    ),
    rpc("/nubo.v1.Triggers/GetTrigger", "GetTrigger", Token(Deploy)),
    rpc(
        "/nubo.v1.Triggers/ListTriggers",
        "ListTriggers",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Triggers/UpdateTrigger",
        "UpdateTrigger",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.Triggers/DeleteTrigger",
        "DeleteTrigger",
        Token(Deploy),
    ),
    rpc(
        "/nubo.v1.TriggerControl/Mappings",
        "TriggerMappings",
        Trigger,
    ),
    rpc("/nubo.v1.TriggerControl/Submit", "TriggerSubmit", Trigger),
    rpc("/nubo.v1.TriggerControl/Report", "TriggerReport", Trigger),
    rpc("/nubo.v1.Tokens/CreateToken", "CreateToken", Token(Admin)),
    rpc("/nubo.v1.Tokens/ListTokens", "ListTokens", Token(Admin)),
    rpc("/nubo.v1.Tokens/RevokeToken", "RevokeToken", Token(Admin)),
    rpc(
        "/nubo.v1.RaftInternal/AppendEntries",
        "AppendEntries",
        Cluster,
    ),
    rpc("/nubo.v1.RaftInternal/Vote", "Vote", Cluster),
    rpc(
        "/nubo.v1.RaftInternal/InstallSnapshot",
        "InstallSnapshot",
        Cluster,
    ),
    rpc("/nubo.v1.RaftInternal/Forward", "Forward", Cluster),
    rpc("/nubo.v1.RaftInternal/ReadIndex", "ReadIndex", Cluster),
    rpc("/nubo.v1.BlobInternal/PushBlob", "PushBlob", Cluster),
    rpc("/nubo.v1.BlobInternal/FetchBlob", "FetchBlob", Cluster),
    rpc("/nubo.v1.WorkerControl/Heartbeat", "Heartbeat", Worker),
    rpc("/nubo.v1.WorkerControl/FetchCode", "FetchCode", Worker),
    // Controllers only: a worker host must not run any function with any
    // payload without a token.
    rpc(
        "/nubo.v1.WorkerControl/ForwardInvoke",
        "ForwardInvoke",
        Cluster,
    ),
];

/// Services in the protos that the controller does not serve.
pub const NOT_SERVED: &[&str] = &["WorkerApi"];

pub fn lookup(path: &str) -> Option<&'static Rpc> {
    RPCS.iter().find(|r| r.path == path)
}

/// The verdict on one API call: `Api::run` runs the handler body only
/// when nothing was denied.
pub struct Call {
    pub name: &'static str,
    pub denied: Option<ApiError>,
}

impl Api {
    /// Checks the caller's bearer token against the table's entry for
    /// `path`.
    pub(crate) fn authorize(&self, md: &MetadataMap, path: &'static str) -> Call {
        let Some(rpc) = lookup(path) else {
            return Call {
                name: path,
                denied: Some(ApiError::Internal(format!("{path} has no access rule"))),
            };
        };
        let denied = match rpc.access {
            Access::Token(need) => self.check_token(md, need, rpc.name).err(),
            other => Some(ApiError::Internal(format!(
                "{path} needs {other:?}, not a token"
            ))),
        };
        Call {
            name: rpc.name,
            denied,
        }
    }

    /// Checks the bearer token and its scope.
    fn check_token(&self, md: &MetadataMap, need: Scope, method: &str) -> Result<(), ApiError> {
        let raw = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::Unauthenticated("missing bearer token".into())
                    .with_reason(Reason::TokenMissing)
            })?;
        let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
        let hash = hash_token(token);
        let scope = self
            .node
            .with_registry(|r| r.token_by_hash(&hash).map(|t| t.scope))
            .ok_or_else(|| {
                ApiError::Unauthenticated("unknown or revoked token".into())
                    .with_reason(Reason::TokenUnknown)
            })?;
        if !scope.allows(need) {
            return Err(ApiError::PermissionDenied(
                format!(
                    "a token of scope `{}` cannot call {method}: it needs `{}`",
                    scope.as_str(),
                    need.as_str()
                )
                .into(),
            )
            .with_reason(Reason::TokenScope));
        }
        Ok(())
    }
}

impl Internal {
    /// Checks the caller's secret against the table's entry for `path`.
    pub(crate) fn authorize(&self, md: &MetadataMap, path: &str) -> Result<(), Status> {
        match lookup(path) {
            Some(r) if r.access == Access::Cluster => self.check_cluster(md, r.name),
            Some(r) if r.access == Access::Worker => self.check_worker(md),
            Some(r) if r.access == Access::Trigger => self.check_trigger(md),
            _ => Err(Status::internal(format!("{path} has no secret rule"))),
        }
    }

    fn check_worker(&self, md: &MetadataMap) -> Result<(), Status> {
        let got = nubo_proto::presented_secret(md);
        if nubo_proto::secret_matches(got, &self.invoker.worker_secret)
            || nubo_proto::secret_matches(got, &self.node.config.cluster_secret)
        {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong worker secret: give the worker NUBO_WORKER_SECRET from `nubo cluster worker-secret` (computed from the controllers' cluster secret)",
            ))
        }
    }

    fn check_trigger(&self, md: &MetadataMap) -> Result<(), Status> {
        let got = nubo_proto::presented_secret(md);
        let want = nubo_proto::trigger_secret(&self.node.config.cluster_secret);
        let cluster = self.node.config.cluster_secret.as_str();
        if nubo_proto::secret_matches(got, &want)
            || (!cluster.is_empty() && nubo_proto::secret_matches(got, cluster))
        {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "wrong trigger secret: give the trigger NUBO_TRIGGER_SECRET from `nubo cluster trigger-secret` (computed from the controllers' cluster secret)",
            ))
        }
    }

    fn check_cluster(&self, md: &MetadataMap, method: &str) -> Result<(), Status> {
        let got = nubo_proto::presented_secret(md);
        let want = self.node.config.cluster_secret.as_str();
        // Constant-time comparison: the secret guards cluster membership.
        if nubo_proto::secret_matches(got, want) {
            Ok(())
        } else if nubo_proto::secret_matches(got, &self.invoker.worker_secret) {
            // UNAUTHENTICATED like any wrong secret, saying which it was.
            Err(Status::unauthenticated(format!(
                "the worker credential cannot call {method}: only controllers (the cluster secret) may"
            )))
        } else {
            Err(Status::unauthenticated(
                "wrong cluster secret: every controller must share the same cluster_secret",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const PROTOS: &[&str] = &[
        include_str!("../../../proto/nubo/v1/nubo.proto"),
        include_str!("../../../proto/nubo/v1/raft.proto"),
        include_str!("../../../proto/nubo/v1/worker.proto"),
        include_str!("../../../proto/nubo/v1/trigger.proto"),
    ];

    /// Every `service X { rpc Y(` of the protos, as gRPC paths.
    fn proto_paths() -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for proto in PROTOS {
            let package = proto
                .lines()
                .find_map(|l| l.trim().strip_prefix("package "))
                .map(|p| p.trim_end_matches(';').trim())
                .expect("a package line");
            let mut service = None;
            for line in proto.lines() {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().map(str::to_string);
                } else if line.starts_with('}') {
                    service = None;
                } else if let (Some(svc), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
                    if NOT_SERVED.contains(&svc.as_str()) {
                        continue;
                    }
                    let name = rest.split('(').next().unwrap_or("").trim();
                    out.insert(format!("/{package}.{svc}/{name}"));
                }
            }
        }
        out
    }

    /// The access table and the protos name the same methods: an RPC
    /// added to a proto without an access rule fails here (it would be
    /// refused at run time), and so does a rule for an RPC that is gone.
    #[test]
    fn every_rpc_of_the_protos_has_exactly_one_access_rule() {
        let protos = proto_paths();
        assert!(protos.len() > 30, "parsed too few rpcs: {protos:?}");
        let table: BTreeSet<String> = RPCS.iter().map(|r| r.path.to_string()).collect();
        assert_eq!(table.len(), RPCS.len(), "a method appears twice in RPCS");
        let missing: Vec<_> = protos.difference(&table).collect();
        assert!(
            missing.is_empty(),
            "RPCs without an access rule: {missing:?}"
        );
        let stale: Vec<_> = table.difference(&protos).collect();
        assert!(
            stale.is_empty(),
            "access rules for RPCs not in the protos: {stale:?}"
        );
    }
}
