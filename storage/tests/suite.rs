//! openraft's own storage test suite against the sled store.

use openraft::testing::{StoreBuilder, Suite};
use raftcast_raft::typ::StorageError;
use raftcast_raft::TypeConfig;
use raftcast_storage::{LogStore, StateMachineStore, StoreOptions};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = raftcast_storage::open(dir.path(), &StoreOptions::default()).expect("open store");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("openraft storage suite failed: {e}");
    }
}
