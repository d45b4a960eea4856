use nubo_controller::raft::store::{open_db, Durability, LogStore, StateMachineStore};
use nubo_controller::raft::types::{NodeId, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(dir.path()).expect("open rocksdb");
        let d = Durability { sync: true };
        let sm = StateMachineStore::new(db.clone(), d).expect("state machine");
        Ok((dir, LogStore::new(db, d), sm))
    }
}

/// The RocksDB log and state machine stores satisfy every property of
/// openraft's storage test suite (log state, truncation, purge, vote,
/// membership, snapshots), with fsync on.
#[test]
fn rocksdb_store_passes_openraft_storage_suite() {
    Suite::test_all(RocksBuilder).expect("storage suite");
}
