//! The replicated heart of raftcast: openraft's type configuration, the commands that
//! travel through the Raft log, the pure state machine that applies them, and the HTTP
//! transport that carries Raft RPCs between origins (`network`: the client, `rpc`: the
//! routes).
//!
//! This crate knows no storage engine (sled lives in `raftcast-storage`) and no media.
//! [`state::StateMachine::apply`] is a pure function of the log: no clock, no I/O.

pub mod command;
pub mod dedup;
pub mod network;
pub mod node;
pub mod recording;
pub mod rpc;
pub mod snapshot_data;
pub mod state;
pub mod token;
pub mod value;

pub use command::{
    Command, FailKind, Forward, ForwardReply, ObjectName, PinScope, Proposal, Rejection, Request, RequestId, Response,
    Responses, StreamKey,
};
pub use node::NodeAddr;
pub use snapshot_data::SnapshotData;
pub use state::{Event, StateMachine};
pub use value::Value;

/// Identifies an origin in the Raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft type configuration of the raftcast origin cluster.
    pub TypeConfig:
        D = Proposal,
        R = Responses,
        NodeId = NodeId,
        Node = NodeAddr,
        SnapshotData = snapshot_data::SnapshotData,
);

/// Aliases of openraft's generic types for this configuration.
pub mod typ {
    use super::TypeConfig;

    pub type Raft = openraft::Raft<TypeConfig>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type LogId = openraft::LogId<super::NodeId>;
    pub type Vote = openraft::Vote<super::NodeId>;
    pub type StoredMembership = openraft::StoredMembership<super::NodeId, super::NodeAddr>;
    pub type SnapshotMeta = openraft::SnapshotMeta<super::NodeId, super::NodeAddr>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type StorageError = openraft::StorageError<super::NodeId>;
    pub type RaftMetrics = openraft::RaftMetrics<super::NodeId, super::NodeAddr>;
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<super::NodeId, E>;
    pub type ClientWriteError = openraft::error::ClientWriteError<super::NodeId, super::NodeAddr>;
    pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<super::NodeId, super::NodeAddr>;
    pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
}
