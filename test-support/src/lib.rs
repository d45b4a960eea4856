//! Helpers shared by nubo's integration tests (`tests/e2e`, the
//! controller's `tests/cluster`): child processes that are stopped and
//! reaped when dropped, free loopback ports, waiting with a deadline that
//! names what was awaited, starting `nubo up` / `nubo controller` /
//! `nubo worker` with the settings the tests use, a tmpfs mounted for a
//! test (unmounted on drop), a network namespace standing for the outside
//! world (egress tests), a Kafka-compatible broker (tansu) with helpers to
//! create topics, produce and read offsets, and incompressible bytes for
//! big packages.
//!
//! A dev crate only (`publish = false`). It depends on no nubo crate, so
//! any crate of the workspace can use it without a dependency cycle.

pub mod kafka;
pub mod mount;
pub mod net;
pub mod netns;
pub mod nubo;
pub mod process;
pub mod wait;

pub use mount::Tmpfs;
pub use net::{free_port, free_ports, http_get};
pub use netns::RemoteNet;
pub use nubo::Nubo;
pub use process::Proc;
pub use wait::{poll, poll_async, wait_for};

/// `n` bytes that do not compress (xorshift64 from `seed`, which must not
/// be 0): packages that stay big when zipped.
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
