//! The nubo controller: the Raft-replicated function registry and its gRPC
//! deploy API. See ARCHITECTURE.md for the map.

pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
pub mod failpoint;
pub mod invoke;
pub mod metrics;
pub mod raft;
pub mod registry;
pub mod server;
pub mod tasks;
