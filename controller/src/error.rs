//! Error types. `RegistryError` is what validation and the state machine
//! produce (deterministic, serializable: it travels in apply results and in
//! forwarded writes). `ApiError` adds the conditions of a running node.
//! `api::to_status` is the one place that turns them into `tonic::Status`.

use nubo_proto::Reason;
use serde::{Deserialize, Serialize};

/// An error's message (what is wrong, no advice) and, when a client could
/// act on it, a machine-readable `Reason` (sent as `x-nubo-reason`; each
/// client adds its own advice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DetailRepr", into = "DetailRepr")]
pub struct Detail {
    pub message: String,
    pub reason: Option<Reason>,
}

/// How a `Detail` is stored: a plain string when it has no reason (the
/// form replicated results had before reasons), else message and reason.
/// An unknown reason (from a newer node) reads as none.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum DetailRepr {
    Plain(String),
    Full { message: String, reason: String },
}

impl From<DetailRepr> for Detail {
    fn from(r: DetailRepr) -> Self {
        match r {
            DetailRepr::Plain(message) => Detail {
                message,
                reason: None,
            },
            DetailRepr::Full { message, reason } => Detail {
                message,
                reason: Reason::parse(&reason),
            },
        }
    }
}

impl From<Detail> for DetailRepr {
    fn from(d: Detail) -> Self {
        match d.reason {
            None => DetailRepr::Plain(d.message),
            Some(r) => DetailRepr::Full {
                message: d.message,
                reason: r.as_str().to_string(),
            },
        }
    }
}

impl From<String> for Detail {
    fn from(message: String) -> Self {
        Detail {
            message,
            reason: None,
        }
    }
}

impl From<&str> for Detail {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::ops::Deref for Detail {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(Detail),
    #[error("{0}")]
    AlreadyExists(Detail),
    #[error("{0}")]
    InvalidArgument(Detail),
    #[error("{0}")]
    FailedPrecondition(Detail),
}

impl RegistryError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        RegistryError::InvalidArgument(msg.into().into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        RegistryError::NotFound(msg.into().into())
    }
    pub fn exists(msg: impl Into<String>) -> Self {
        RegistryError::AlreadyExists(msg.into().into())
    }
    pub fn precondition(msg: impl Into<String>) -> Self {
        RegistryError::FailedPrecondition(msg.into().into())
    }

    pub fn detail(&self) -> &Detail {
        match self {
            RegistryError::NotFound(d)
            | RegistryError::AlreadyExists(d)
            | RegistryError::InvalidArgument(d)
            | RegistryError::FailedPrecondition(d) => d,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        self.detail().reason
    }

    pub fn with_reason(mut self, reason: Reason) -> Self {
        match &mut self {
            RegistryError::NotFound(d)
            | RegistryError::AlreadyExists(d)
            | RegistryError::InvalidArgument(d)
            | RegistryError::FailedPrecondition(d) => d.reason = Some(reason),
        }
        self
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
        reason: Option<Reason>,
    },
    #[error("{0}")]
    Unauthenticated(Detail),
    #[error("{0}")]
    PermissionDenied(Detail),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Over a concurrency limit or no capacity: RESOURCE_EXHAUSTED.
    #[error("{0}")]
    Throttled(Detail),
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
            reason: None,
        }
    }

    pub fn throttled(message: impl Into<String>) -> Self {
        ApiError::Throttled(message.into().into())
    }

    /// The reason, if the error carries one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ApiError::Registry(r) => r.reason(),
            ApiError::Unavailable { reason, .. } => *reason,
            ApiError::Unauthenticated(d)
            | ApiError::PermissionDenied(d)
            | ApiError::Throttled(d) => d.reason,
            ApiError::DeadlineExceeded(_) | ApiError::WorkerFailed(_) | ApiError::Internal(_) => {
                None
            }
        }
    }

    /// Sets the reason on errors that can carry one (the others have no
    /// reason a client could act on and stay as they are).
    pub fn with_reason(self, r: Reason) -> Self {
        match self {
            ApiError::Registry(e) => ApiError::Registry(e.with_reason(r)),
            ApiError::Unavailable {
                message, leader, ..
            } => ApiError::Unavailable {
                message,
                leader,
                reason: Some(r),
            },
            ApiError::Unauthenticated(d) => ApiError::Unauthenticated(Detail {
                reason: Some(r),
                ..d
            }),
            ApiError::PermissionDenied(d) => ApiError::PermissionDenied(Detail {
                reason: Some(r),
                ..d
            }),
            ApiError::Throttled(d) => ApiError::Throttled(Detail {
                reason: Some(r),
                ..d
            }),
            other => other,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Replicated results written before reasons existed still read, and
    /// an error without a reason is written as it was then; one with a
    /// reason keeps it across the wire.
    #[test]
    fn registry_errors_keep_their_stored_form() {
        let old: RegistryError = serde_json::from_str(r#"{"NotFound":"function f not found"}"#)
            .expect("the old form reads");
        assert_eq!(old, RegistryError::not_found("function f not found"));
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"NotFound":"function f not found"}"#
        );
        let new =
            RegistryError::not_found("function f not found").with_reason(Reason::FunctionNotFound);
        let back: RegistryError =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(back.reason(), Some(Reason::FunctionNotFound));
        assert_eq!(back.to_string(), "function f not found");
    }
}
