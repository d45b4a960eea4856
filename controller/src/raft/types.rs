//! openraft type configuration of the controller group.

use std::io::Cursor;

use crate::registry::model::{ApplyResult, Command};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Log entries carry registry commands; apply returns their results.
    pub TypeConfig:
        D = Command,
        R = ApplyResult,
);

pub type Raft = openraft::Raft<TypeConfig>;
