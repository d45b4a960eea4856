//! Controller integration tests: openraft's storage suite on the RocksDB
//! store, fault-injected clusters of 3 and 5 nodes, and a linearizability
//! check of the registry API under a nemesis. One binary, several modules.

mod api;
mod disk;
mod faults;
mod harness;
mod linearizability;
mod storage_suite;
mod workers;
