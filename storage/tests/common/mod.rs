//! Helpers shared by the storage tests: a single-node Raft over the sled store.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::network::HttpNetwork;
use raftcast_raft::rpc::ClusterSecret;
use raftcast_raft::typ::Raft;
use raftcast_raft::{Command, NodeAddr, Proposal, Request, RequestId, Response, Value};
use raftcast_storage::{StateHandle, StoreOptions};

pub fn raft_config() -> Arc<openraft::Config> {
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// Opens the store in `dir` and runs a one-node Raft (id 1) over it.
pub async fn single_node(dir: &Path) -> (Raft, StateHandle) {
    let (log, sm) = raftcast_storage::open(dir, &StoreOptions::default()).expect("open store");
    let state = sm.handle();
    let secret = ClusterSecret::new("test-secret-0123456789").unwrap();
    let network = HttpNetwork::new(1, secret);
    let raft = Raft::new(1, raft_config(), network, log, sm).await.expect("start raft");
    (raft, state)
}

/// Initializes the one-node cluster if needed and waits until it leads.
pub async fn lead(raft: &Raft) {
    let nodes = BTreeMap::from([(1u64, NodeAddr::new("127.0.0.1:1", "127.0.0.1:2"))]);
    let _ = raft.initialize(nodes).await;
    raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.expect("becomes leader");
}

/// Writes slot `slot` of object `object` and returns the new version.
pub async fn write_slot(raft: &Raft, object: &str, slot: &str, value: f64) -> u64 {
    let req = Request {
        id: RequestId::random(),
        at_ms: 0,
        command: Command::SetSlots {
            object: object.into(),
            slots: vec![(slot.into(), Value::Number(value))],
            if_version: None,
            persistent: true,
        },
    };
    match raft.client_write(Proposal::single(req)).await.expect("write").data.as_slice() {
        [Response::ObjectVersion { version }] => *version,
        other => panic!("unexpected response {other:?}"),
    }
}
