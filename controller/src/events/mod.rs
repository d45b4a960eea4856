//! The async path: any controller accepts an event (durable once its Raft
//! command commits); the leader's dispatcher attempts queued events,
//! retries them, and dead-letters or forwards them to destinations.

pub mod dead_letters;
pub mod destinations;
pub mod dispatcher;
