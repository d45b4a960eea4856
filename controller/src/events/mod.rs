//! The async path, run by the leader only: the dispatcher that attempts
//! queued events, retries them, and dead-letters them.

pub mod dispatcher;
