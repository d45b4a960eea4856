//! Consensus only: the openraft node, its RocksDB storage, the transport
//! between controllers (with injectable faults), and code blobs, which
//! travel beside the log. Knows nothing of invoke, events or the API.

pub mod blobs;
pub mod disk;
pub mod network;
pub mod node;
pub mod store;
pub mod types;
