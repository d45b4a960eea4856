//! The replicated registry, pure: the data model, the state machine's apply,
//! validation, code package inspection and the async queue's logic. No I/O,
//! no clock, no network: every controller computes the same result.

pub mod asyncq;
pub mod codezip;
pub mod mappings;
pub mod model;
pub mod state;
pub mod validate;
