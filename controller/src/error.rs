//! Error types. `RegistryError` is what validation and the state machine
//! produce (deterministic, serializable: it travels in apply results and in
//! forwarded writes). `ApiError` adds the conditions of a running node.
//! `api::to_status` is the one place that turns them into `tonic::Status`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
}

impl RegistryError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        RegistryError::InvalidArgument(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        RegistryError::NotFound(msg.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// This node cannot serve now (no leader, no quorum). Carries the
    /// leader's address when one is known, so clients can go there.
    #[error("{message}")]
    Unavailable {
        message: String,
        leader: Option<String>,
    },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Over a concurrency limit or no capacity: RESOURCE_EXHAUSTED.
    #[error("{0}")]
    Throttled(String),
    /// A worker failed while running the call: ABORTED, retry at a higher
    /// level (the function may have run).
    #[error("{0}")]
    WorkerFailed(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn unavailable(message: impl Into<String>, leader: Option<String>) -> Self {
        ApiError::Unavailable {
            message: message.into(),
            leader,
        }
    }
}

/// Errors of the RocksDB store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening RocksDB at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("RocksDB {op}: {source}")]
    Rocks {
        op: &'static str,
        source: rocksdb::Error,
    },
    /// A key read from disk does not have the shape this store writes.
    #[error("corrupt key in column family {cf}: {len} bytes, expected 8")]
    CorruptKey { cf: &'static str, len: usize },
    #[error("decoding {what}: {source}")]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },
}
