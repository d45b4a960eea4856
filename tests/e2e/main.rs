//! End-to-end tests of the `nubo` binary: real processes on loopback ports,
//! driven through the CLI exactly as a user would. One test binary, one
//! module per topic; what they share is in `support` (and the
//! `nubo-test-support` crate).

mod containment;
mod deploy;
mod egress;
mod events;
mod failover;
mod invoke;
mod kafka;
mod support;
