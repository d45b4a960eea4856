//! Helpers shared by nubo's integration tests (`tests/e2e`, the
//! controller's `tests/cluster`): child processes that are stopped and
//! reaped when dropped, free loopback ports, waiting with a deadline that
//! names what was awaited, and starting `nubo up` / `nubo controller` /
//! `nubo worker` with the settings the tests use.
//!
//! A dev crate only (`publish = false`). It depends on no nubo crate, so
//! any crate of the workspace can use it without a dependency cycle.

pub mod net;
pub mod nubo;
pub mod process;
pub mod wait;

pub use net::{free_port, free_ports, http_get};
pub use nubo::Nubo;
pub use process::Proc;
pub use wait::{poll, poll_async, wait_for};
