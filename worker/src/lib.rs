//! nubo worker: runs functions in container sandboxes. See ARCHITECTURE.md.
//!
//! - [`config`]: the settings and their defaults, defined once;
//!   [`start`](start()) wires a worker from them.
//! - [`sandbox`]: the sandbox traits, the Runtime API, and two
//!   implementations: [`sandbox::container`] (OCI containers via crun or
//!   runc, with the host, namespace, spec and seccomp pieces they need) and
//!   [`sandbox::fake`] (in-process, for tests).
//! - [`pool`]: warm reuse, admission, LRU eviction, keep-alive.
//! - [`core`]: one invocation with Lambda's log lines; [`server`]: the gRPC
//!   API, heartbeats, code fetching, metrics.
//! - [`tasks`]: named long-lived tasks stopped by one shutdown token.

pub mod attempts;
pub mod cidr;
pub mod code;
pub mod config;
pub mod core;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod sandbox;
pub mod server;
mod start;
pub mod tasks;

pub use config::WorkerConfig;
pub use start::{start, LinuxWorker, WorkerError};
