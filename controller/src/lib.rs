//! The nubo controller: the Raft-replicated function registry and its gRPC
//! deploy API. See ARCHITECTURE.md for the map.

pub mod api;
pub mod asyncq;
pub mod codezip;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod failpoint;
pub mod invoke;
pub mod metrics;
pub mod model;
pub mod network;
pub mod node;
pub mod server;
pub mod state;
pub mod store;
pub mod types;
pub mod validate;
pub mod workers;
