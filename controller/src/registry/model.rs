//! Plain data of the registry: what the state machine stores and what Raft
//! log entries carry. No prost types here; `api` converts at the edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `$LATEST`, the mutable head of a function.
pub const LATEST: &str = "$LATEST";

/// Configuration of a function at `$LATEST` or frozen in a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionConfig {
    pub runtime: String,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_seconds: u32,
    pub environment: BTreeMap<String, String>,
    pub description: String,
    pub ephemeral_storage_mb: u32,
    pub reserved_concurrency: Option<u32>,
    pub async_config: AsyncConfig,
    pub egress: bool,
    /// Sandboxes kept warm (provisioned concurrency) for a version with
    /// this configuration that is `$LATEST` or the target of an alias.
    #[serde(default)]
    pub min_warm: u32,
    pub code_sha256: String,
    pub code_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsyncConfig {
    pub maximum_retry_attempts: u32,
    pub maximum_event_age_seconds: u32,
    pub dead_letter_target: String,
    /// Function that receives Lambda's success record of each async event.
    #[serde(default)]
    pub on_success_target: String,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            maximum_retry_attempts: 2,
            maximum_event_age_seconds: 21_600,
            dead_letter_target: String::new(),
            on_success_target: String::new(),
        }
    }
}

/// A partial configuration: `None` keeps the current value (update) or takes
/// the default (create). Produced by the API layer after validation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigPatch {
    pub runtime: Option<String>,
    pub handler: Option<String>,
    pub memory_mb: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub environment: Option<BTreeMap<String, String>>,
    pub description: Option<String>,
    pub ephemeral_storage_mb: Option<u32>,
    /// `Some(None)` clears the reservation. Spelled out in the log as an
    /// absent field (keep) or a value/null (set/clear): plain serde would
    /// write `Some(None)` as `null` and read it back as `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub reserved_concurrency: Option<Option<u32>>,
    pub maximum_retry_attempts: Option<u32>,
    pub maximum_event_age_seconds: Option<u32>,
    pub dead_letter_target: Option<String>,
    #[serde(default)]
    pub on_success_target: Option<String>,
    pub egress: Option<bool>,
    #[serde(default)]
    pub min_warm: Option<u32>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl ConfigPatch {
    /// Applies the patch over `base`.
    pub fn apply_to(&self, base: &FunctionConfig) -> FunctionConfig {
        let mut c = base.clone();
        if let Some(v) = &self.runtime {
            c.runtime = v.clone();
        }
        if let Some(v) = &self.handler {
            c.handler = v.clone();
        }
        if let Some(v) = self.memory_mb {
            c.memory_mb = v;
        }
        if let Some(v) = self.timeout_seconds {
            c.timeout_seconds = v;
        }
        if let Some(v) = &self.environment {
            c.environment = v.clone();
        }
        if let Some(v) = &self.description {
            c.description = v.clone();
        }
        if let Some(v) = self.ephemeral_storage_mb {
            c.ephemeral_storage_mb = v;
        }
        if let Some(v) = self.reserved_concurrency {
            c.reserved_concurrency = v;
        }
        if let Some(v) = self.maximum_retry_attempts {
            c.async_config.maximum_retry_attempts = v;
        }
        if let Some(v) = self.maximum_event_age_seconds {
            c.async_config.maximum_event_age_seconds = v;
        }
        if let Some(v) = &self.dead_letter_target {
            c.async_config.dead_letter_target = v.clone();
        }
        if let Some(v) = &self.on_success_target {
            c.async_config.on_success_target = v.clone();
        }
        if let Some(v) = self.egress {
            c.egress = v;
        }
        if let Some(v) = self.min_warm {
            c.min_warm = v;
        }
        c
    }
}

impl FunctionConfig {
    /// Lambda's defaults for everything the create request left unset.
    pub fn defaults(code_sha256: String, code_size: u64) -> FunctionConfig {
        FunctionConfig {
            runtime: String::new(),
            handler: String::new(),
            memory_mb: 128,
            timeout_seconds: 3,
            environment: BTreeMap::new(),
            description: String::new(),
            ephemeral_storage_mb: 512,
            reserved_concurrency: None,
            async_config: AsyncConfig::default(),
            egress: false,
            min_warm: 0,
            code_sha256,
            code_size,
        }
    }

    /// Whether publishing `self` after `other` would be a no-op: code and
    /// everything a version freezes are equal (the description of the
    /// version itself is not part of the comparison).
    pub fn same_for_publish(&self, other: &FunctionConfig) -> bool {
        self == other
    }
}

/// A published, immutable version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub number: u64,
    pub config: FunctionConfig,
    /// The `$LATEST` revision it was published from.
    pub revision_id: String,
    pub version_description: String,
    pub published_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alias {
    pub name: String,
    pub function_version: String,
    pub routing: BTreeMap<String, f64>,
    pub description: String,
    pub revision_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    pub name: String,
    pub latest: FunctionConfig,
    pub latest_revision: String,
    pub last_modified_ms: u64,
    /// When this function (this incarnation of the name) was created; log
    /// lines older than it belong to a deleted namesake. 0 in a registry
    /// written before it was recorded.
    #[serde(default)]
    pub created_ms: u64,
    pub versions: BTreeMap<u64, Version>,
    /// Next version number; never decreases, so numbers are never reused.
    pub next_version: u64,
    pub aliases: BTreeMap<String, Alias>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    /// Invoke only.
    Invoke,
    /// Functions, versions, aliases (and invoke).
    Deploy,
    /// Everything, including tokens and cluster membership.
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "admin" => Some(Scope::Admin),
            "deploy" => Some(Scope::Deploy),
            "invoke" => Some(Scope::Invoke),
            _ => None,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
        }
    }
    /// Whether a token of scope `self` may perform an action needing `need`.
    pub fn allows(&self, need: Scope) -> bool {
        *self >= need
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// sha256 of the secret, hex.
    pub hash: String,
    pub created_at_ms: u64,
}

/// What a Raft log entry asks the state machine to do. Everything a command
/// needs (time, sizes) is inside it, so apply is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    CreateFunction {
        name: String,
        config: FunctionConfig,
        /// The code package was pushed to a majority of controllers just
        /// before this command (blobs travel outside the log). Without it
        /// the blob must already be referenced.
        code_stored: bool,
        publish: bool,
        now_ms: u64,
    },
    UpdateFunctionCode {
        name: String,
        code_sha256: String,
        code_size: u64,
        code_stored: bool,
        expected_revision: Option<String>,
        publish: bool,
        now_ms: u64,
    },
    UpdateFunctionConfiguration {
        name: String,
        patch: ConfigPatch,
        expected_revision: Option<String>,
        now_ms: u64,
    },
    DeleteFunction {
        name: String,
    },
    DeleteVersion {
        name: String,
        version: u64,
    },
    PublishVersion {
        name: String,
        description: String,
        expected_code_sha256: Option<String>,
        expected_revision: Option<String>,
        now_ms: u64,
    },
    CreateAlias {
        function: String,
        alias: String,
        function_version: String,
        routing: BTreeMap<String, f64>,
        description: String,
    },
    UpdateAlias {
        function: String,
        alias: String,
        function_version: Option<String>,
        routing: Option<BTreeMap<String, f64>>,
        description: Option<String>,
        expected_revision: Option<String>,
    },
    DeleteAlias {
        function: String,
        alias: String,
    },
    CreateToken {
        token: Token,
    },
    RevokeToken {
        id: String,
    },
    /// An accepted asynchronous invocation (durable once committed).
    EnqueueEvent(crate::registry::asyncq::AsyncEvent),
    /// An asynchronous invocation with a client idempotency key: enqueued
    /// unless the key was used for the function within its window.
    EnqueueKeyed {
        event: crate::registry::asyncq::AsyncEvent,
        key: String,
        expires_ms: u64,
    },
    /// The outcome of an attempt of a queued event, decided by
    /// `asyncq::next_step` on the dispatcher.
    EventStep {
        request_id: String,
        step: crate::registry::asyncq::Step,
    },
    /// Dead letters of `function` back on the queue (all, or `ids`).
    DlqRedrive {
        function: String,
        ids: Option<Vec<String>>,
        now_ms: u64,
    },
    DlqPurge {
        function: String,
    },
    /// A record straight into a dead-letter queue, unattempted (a
    /// destination record stopped by the recursion bound).
    DeadLetter(crate::registry::asyncq::DeadLetter),
    /// Creates (`create`) or replaces an event source mapping.
    PutMapping {
        mapping: crate::registry::mappings::Mapping,
        create: bool,
        expected_revision: Option<String>,
    },
    DeleteMapping {
        id: String,
    },
    /// What trigger instances saw of their mappings (state, offsets).
    ReportMappings {
        reports: Vec<crate::registry::mappings::MappingStatus>,
    },
    /// A no-op entry (used to probe that the log accepts writes).
    Noop,
    /// `cmd` tagged with a request id: applying the same id again returns
    /// the first result and changes nothing, so a write retried after a
    /// lost reply (forwarding, client failover) is applied once.
    Idempotent {
        id: String,
        cmd: Box<Command>,
    },
    /// Several independent commands in one log entry, applied in order;
    /// each gets its own result. The leader batches concurrent writes so
    /// they share one append and one fsync.
    Batch(Vec<Command>),
}

impl Command {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateFunction { .. } => "CreateFunction",
            Command::UpdateFunctionCode { .. } => "UpdateFunctionCode",
            Command::UpdateFunctionConfiguration { .. } => "UpdateFunctionConfiguration",
            Command::DeleteFunction { .. } => "DeleteFunction",
            Command::DeleteVersion { .. } => "DeleteVersion",
            Command::PublishVersion { .. } => "PublishVersion",
            Command::CreateAlias { .. } => "CreateAlias",
            Command::UpdateAlias { .. } => "UpdateAlias",
            Command::DeleteAlias { .. } => "DeleteAlias",
            Command::CreateToken { .. } => "CreateToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::EnqueueEvent(_) => "EnqueueEvent",
            Command::EnqueueKeyed { .. } => "EnqueueKeyed",
            Command::EventStep { .. } => "EventStep",
            Command::DlqRedrive { .. } => "DlqRedrive",
            Command::DlqPurge { .. } => "DlqPurge",
            Command::DeadLetter(_) => "DeadLetter",
            Command::PutMapping { .. } => "PutMapping",
            Command::DeleteMapping { .. } => "DeleteMapping",
            Command::ReportMappings { .. } => "ReportMappings",
            Command::Noop => "Noop",
            Command::Idempotent { cmd, .. } => cmd.kind(),
            Command::Batch(_) => "Batch",
        }
    }
}

/// A view of one function configuration as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    pub function_name: String,
    /// `$LATEST` or the version number.
    pub version: String,
    pub config: FunctionConfig,
    pub revision_id: String,
    pub last_modified_ms: u64,
}

/// The result of applying a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// The results of a `Command::Batch`, in order.
    Batch(Vec<ApplyResult>),
    Config(ConfigView),
    Alias(Alias),
    /// How many items a command moved or removed.
    Count(u64),
    /// A token was created: its id (a retry of the call that created it
    /// gets the first attempt's id back, see `api/tokens.rs`).
    Token(String),
    /// An event source mapping, as stored.
    Mapping(Box<crate::registry::mappings::Mapping>),
    /// An event with an idempotency key: the request id the key names, and
    /// whether it was already there (nothing enqueued).
    Keyed {
        request_id: String,
        duplicate: bool,
    },
}

/// What the state machine returns for one entry: the command's result, or
/// the registry error it produced (deterministic on every node).
pub type ApplyResult = Result<Outcome, crate::error::RegistryError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Clearing the reserved concurrency survives the trip through the
    /// Raft log (JSON): `Some(None)` must not come back as `None`.
    #[test]
    fn patch_keeps_clear_set_and_keep_apart_through_the_log() {
        for v in [None, Some(None), Some(Some(0)), Some(Some(7))] {
            let p = ConfigPatch {
                reserved_concurrency: v,
                ..Default::default()
            };
            let back: ConfigPatch =
                serde_json::from_slice(&serde_json::to_vec(&p).expect("encode")).expect("decode");
            assert_eq!(back.reserved_concurrency, v);
        }
    }
}
