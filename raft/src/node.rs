//! What the cluster knows about each origin: the addresses it serves on.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The addresses of one origin, carried in openraft's membership so every node (and,
/// through the admin API, every edge) learns them from the replicated log.
///
/// Addresses are fixed for the life of a node id: changing one means removing the node
/// and adding it again (openraft's `SetNodes` can split the cluster).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAddr {
    /// `host:port` of the admin HTTP API and Raft RPC.
    pub http: String,
    /// `host:port` of the edge↔origin media link.
    pub media: String,
}

impl NodeAddr {
    pub fn new(http: impl Into<String>, media: impl Into<String>) -> Self {
        Self { http: http.into(), media: media.into() }
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http={} media={}", self.http, self.media)
    }
}
