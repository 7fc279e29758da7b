//! Membership changes, executed on the leader: adding a learner (answered once it has
//! caught up), setting the voters, removing a node. Also the membership as this node
//! sees it, for addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use raftcast_raft::typ::Raft;
use raftcast_raft::{FailKind, ForwardReply, NodeAddr, NodeId};

use super::commit::{failed, leadership_error};

/// The leader answers a forwarded membership change this long before the forwarding
/// node's own deadline, so its answer ("not caught up") arrives rather than a timeout.
const ANSWER_MARGIN: Duration = Duration::from_millis(750);

/// Executes membership changes while this node leads. Cheap to clone.
#[derive(Clone)]
pub struct Membership {
    raft: Raft,
    /// The whole deadline of a request: a learner may take a while to catch up.
    deadline: Duration,
}

impl Membership {
    pub fn new(raft: Raft, deadline: Duration) -> Self {
        Membership { raft, deadline }
    }

    /// Every member's media address (`Forward::Origins`).
    pub fn origins(&self) -> ForwardReply {
        ForwardReply::Origins(members(&self.raft).1.into_iter().map(|(id, a)| (id, a.media)).collect())
    }

    /// Adds `id` at `addr` as a learner and answers once it has caught up.
    pub async fn add_learner(&self, id: NodeId, addr: &NodeAddr) -> ForwardReply {
        if let Err(e) = self.raft.ensure_linearizable().await {
            return leadership_error(e);
        }
        match members(&self.raft).1.get(&id) {
            Some(existing) if existing == addr => {}
            Some(existing) => {
                return failed(
                    FailKind::Conflict,
                    format!("node {id} already exists at {existing}; remove it before adding it again"),
                )
            }
            None => {
                let added = self.raft.add_learner(id, addr.clone(), false).await.map(drop);
                if let reply @ (ForwardReply::NotLeader { .. } | ForwardReply::Failed { .. }) = membership_reply(added)
                {
                    return reply;
                }
            }
        }
        self.wait_caught_up(id, addr).await
    }

    /// Makes `ids` the voters; every one must be a member already.
    pub async fn set_voters(&self, ids: &BTreeSet<NodeId>) -> ForwardReply {
        if ids.is_empty() {
            return failed(FailKind::BadRequest, "the voter set must not be empty");
        }
        if let Err(e) = self.raft.ensure_linearizable().await {
            return leadership_error(e);
        }
        let (_, nodes) = members(&self.raft);
        let unknown: Vec<_> = ids.iter().filter(|id| !nodes.contains_key(id)).collect();
        if !unknown.is_empty() {
            return failed(FailKind::NotFound, format!("unknown node ids {unknown:?}: add them as learners first"));
        }
        membership_reply(self.raft.change_membership(ids.clone(), false).await.map(drop))
    }

    /// Removes `id`, a voter or a learner (never the last voter).
    pub async fn remove_node(&self, id: NodeId) -> ForwardReply {
        if let Err(e) = self.raft.ensure_linearizable().await {
            return leadership_error(e);
        }
        let (voters, nodes) = members(&self.raft);
        if !nodes.contains_key(&id) {
            return failed(FailKind::NotFound, format!("node {id} is not a member"));
        }
        let result = if voters.contains(&id) {
            let rest: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
            if rest.is_empty() {
                return failed(FailKind::BadRequest, "cannot remove the last voter");
            }
            self.raft.change_membership(rest, false).await
        } else {
            self.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await
        };
        membership_reply(result.map(drop))
    }

    /// Waits until learner `id` has replicated everything up to now, so "added"
    /// means reachable and caught up (openraft's own blocking `add_learner` accepts a
    /// learner that is thousands of entries behind, even one that is not running).
    async fn wait_caught_up(&self, id: NodeId, addr: &NodeAddr) -> ForwardReply {
        let target = self.raft.metrics().borrow().last_log_index;
        let budget = self.deadline.saturating_sub(ANSWER_MARGIN);
        let caught_up = self
            .raft
            .wait(Some(budget))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id))
                        .is_some_and(|matched| matched.map(|l| l.index) >= target)
                },
                "learner caught up",
            )
            .await;
        match caught_up {
            Ok(_) => ForwardReply::Done,
            Err(_) if self.raft.metrics().borrow().replication.is_none() => ForwardReply::NotLeader { leader: None },
            Err(_) => failed(
                FailKind::Unavailable,
                format!(
                    "node {id} is a learner now but has not caught up within {:?}; is it running at {}? \
                     Retry the same request once it is",
                    budget, addr.http
                ),
            ),
        }
    }
}

/// The address of member `id`, as this node's membership says.
pub fn node_addr(raft: &Raft, id: NodeId) -> Option<NodeAddr> {
    raft.metrics().borrow().membership_config.membership().get_node(&id).cloned()
}

/// The voters, and every member with its address, as this node's membership says.
pub fn members(raft: &Raft) -> (BTreeSet<NodeId>, BTreeMap<NodeId, NodeAddr>) {
    let config = raft.metrics().borrow().membership_config.clone();
    let m = config.membership();
    (m.voter_ids().collect(), m.nodes().map(|(id, n)| (*id, n.clone())).collect())
}

fn membership_reply(result: Result<(), RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>>) -> ForwardReply {
    match result {
        Ok(()) => ForwardReply::Done,
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            ForwardReply::NotLeader { leader: f.leader_id }
        }
        // Another change is still being committed: retry shortly.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(_)))) => {
            ForwardReply::NotLeader { leader: None }
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            failed(FailKind::Conflict, e.to_string())
        }
        Err(RaftError::Fatal(e)) => failed(FailKind::Unavailable, format!("raft stopped: {e}")),
    }
}
