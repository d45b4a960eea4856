//! The sandbox abstraction: a place where one version of a function runs,
//! one event at a time. [`container`] implements it with OCI containers;
//! [`fake`] implements it in-process so pooling and placement logic test
//! without root. [`runtime_api`] is the Lambda Runtime API a container's
//! runtime talks to.

pub mod container;
pub mod fake;
pub mod runtime_api;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// Everything needed to run one version of a function (the worker keeps
/// no registry; the controller sends this with every call).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FunctionSpec {
    pub function_name: String,
    pub version: String,
    pub runtime: String,
    pub handler: String,
    pub memory_mb: u32,
    pub timeout_seconds: u32,
    pub environment: BTreeMap<String, String>,
    pub ephemeral_storage_mb: u32,
    pub egress: bool,
    pub code_sha256: String,
    pub code_size: u64,
}

impl FunctionSpec {
    /// `arn:...:function:NAME[:VERSION]`, what the context reports.
    pub fn arn(&self) -> String {
        let base = format!(
            "arn:aws:lambda:local:000000000000:function:{}",
            self.function_name
        );
        if self.version == "$LATEST" {
            base
        } else {
            format!("{base}:{}", self.version)
        }
    }

    pub fn is_python(&self) -> bool {
        self.runtime.starts_with("python")
    }
}

/// One event for a sandbox.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub request_id: String,
    pub payload: Bytes,
    pub timeout: Duration,
}

/// How an invocation ended, from the caller's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// The handler's result.
    Ok(Bytes),
    /// A function error: `kind` is Lambda's `X-Amz-Function-Error`
    /// (`Unhandled` or `Handled`), `body` the error document.
    FunctionError { kind: String, body: Bytes },
}

impl Completion {
    /// An `Unhandled` error with Lambda's document shape.
    pub fn unhandled(error_type: &str, message: &str) -> Completion {
        Completion::FunctionError {
            kind: "Unhandled".into(),
            body: Bytes::from(
                serde_json::json!({"errorMessage": message, "errorType": error_type}).to_string(),
            ),
        }
    }
}

#[derive(Debug)]
pub struct InvokeResult {
    pub completion: Completion,
    /// False when the sandbox died or was killed: it must not be reused.
    pub reusable: bool,
    /// Peak memory during the invocation, when the sandbox can tell.
    pub max_memory_mb: Option<u64>,
    /// What the function printed during the invocation.
    pub lines: Vec<String>,
    /// A platform line for the log (timeout, out of memory, crash).
    pub platform_line: Option<String>,
}

/// A sandbox that finished its init.
pub struct Created<S> {
    pub sandbox: S,
    pub init_duration: Duration,
    /// What the runtime printed while starting.
    pub init_lines: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The function's own init failed (bad handler, import error, crash at
    /// import): reported to the caller as a function error.
    #[error("init failed: {error_type}")]
    Init {
        error_type: String,
        body: Bytes,
        lines: Vec<String>,
        init_duration: Duration,
    },
    /// The platform could not set the sandbox up.
    #[error("{0}")]
    Setup(String),
}

pub trait Sandbox: Send + Sync + 'static {
    fn invoke(&self, inv: Invocation) -> impl Future<Output = InvokeResult> + Send;
    /// Whether the runtime is still running (an idle sandbox can die).
    fn alive(&self) -> bool;
    fn destroy(self) -> impl Future<Output = ()> + Send;
}

pub trait SandboxFactory: Send + Sync + 'static {
    type Sandbox: Sandbox;
    fn create(
        &self,
        spec: &FunctionSpec,
        id: u64,
    ) -> impl Future<Output = Result<Created<Self::Sandbox>, CreateError>> + Send;
}
