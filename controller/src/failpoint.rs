//! Failpoints (see `nubo_proto::failpoint`): shared with the trigger role,
//! whose accept-then-commit path has one too.

pub use nubo_proto::failpoint::hit;
