//! Admission control of writes: the byte budget of writes waiting on this node, and the
//! leader's bound on entries it has not applied. A write that would break either is
//! refused at once with [`FailKind::Overloaded`] and never proposed, so the memory the
//! write path holds is bounded in bytes and a flood of large values slows nobody's
//! heartbeats.

use std::sync::Arc;

use raftcast_raft::{rpc, Command, FailKind, ForwardReply, Request};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::failed;
use crate::origin::config::WriteLimits;

/// The pending-bytes budget and the apply-lag bound. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    limits: WriteLimits,
    /// One permit per byte of writes waiting here (queued, proposed, or forwarded and
    /// not yet answered); a write holds its permits until it is answered.
    bytes: Arc<Semaphore>,
}

/// Why admission refused a write (the `reason` label of `raftcast_raft_writes_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The writes waiting on this node hold `--max-pending-write-bytes`.
    PendingBytes,
    /// The leader holds more than `--max-apply-lag` entries it has not applied: a
    /// majority does not keep up with replication, or apply does not keep up.
    ApplyLag,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PendingBytes => "pending_bytes",
            Refusal::ApplyLag => "apply_lag",
        }
    }

    pub(super) fn reply(self, limits: &WriteLimits) -> ForwardReply {
        let why = match self {
            Refusal::PendingBytes => {
                format!("more than {} bytes of writes are waiting on this origin", limits.max_pending_bytes)
            }
            Refusal::ApplyLag => {
                format!("the leader has more than {} log entries not yet applied", limits.max_apply_lag)
            }
        };
        failed(FailKind::Overloaded, format!("overloaded: {why}; retry in a second"))
    }
}

impl Admission {
    pub fn new(limits: WriteLimits) -> Self {
        Admission { limits, bytes: Arc::new(Semaphore::new(limits.max_pending_bytes)) }
    }

    pub fn limits(&self) -> &WriteLimits {
        &self.limits
    }

    /// Reserves `bytes` of the pending-writes budget (a write larger than the whole
    /// budget reserves all of it, so it still goes when nothing else waits).
    pub fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Refusal> {
        let n = bytes.clamp(1, self.limits.max_pending_bytes);
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.bytes.clone().try_acquire_many_owned(n).map_err(|_| Refusal::PendingBytes)
    }

    /// Bytes of writes waiting on this node now.
    pub fn pending_bytes(&self) -> usize {
        self.limits.max_pending_bytes.saturating_sub(self.bytes.available_permits())
    }

    /// Whether a leader with these metrics takes new writes.
    pub fn check_lag(&self, m: &raftcast_raft::typ::RaftMetrics) -> Result<(), Refusal> {
        let last = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        if m.current_leader == Some(m.id) && last.saturating_sub(applied) > self.limits.max_apply_lag {
            return Err(Refusal::ApplyLag);
        }
        Ok(())
    }
}

/// Whether admission applies to `command`. Stream-ownership commands are exempt: they
/// are a few hundred bytes, one per publish, and refusing them would stop publishers
/// because shared-object writers flood the log.
pub fn admitted_by_budget(command: &Command) -> bool {
    command.batchable()
}

/// The bytes a request takes in a log entry (its bincode encoding).
pub fn encoded_len(request: &Request) -> usize {
    rpc::encode(request).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_bounds_pending_bytes_and_the_leaders_apply_lag() {
        let limits = WriteLimits { max_entry_bytes: 64 * 1024, max_pending_bytes: 200_000, max_apply_lag: 10 };
        let admission = Admission::new(limits);
        let a = admission.reserve(100_000).unwrap();
        let b = admission.reserve(90_000).unwrap();
        assert_eq!(admission.pending_bytes(), 190_000);
        assert_eq!(admission.reserve(20_000).err(), Some(Refusal::PendingBytes));
        drop(a);
        let c = admission.reserve(20_000).unwrap();
        drop((b, c));
        // A write larger than the whole budget goes when nothing else waits.
        let huge = admission.reserve(10_000_000).unwrap();
        assert_eq!(admission.reserve(1).err(), Some(Refusal::PendingBytes));
        drop(huge);
        assert_eq!(admission.pending_bytes(), 0);

        let mut m = raftcast_raft::typ::RaftMetrics::new_initial(1);
        m.current_leader = Some(1);
        m.last_log_index = Some(100);
        m.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 90));
        assert_eq!(admission.check_lag(&m), Ok(()));
        m.last_log_index = Some(101);
        assert_eq!(admission.check_lag(&m), Err(Refusal::ApplyLag));
        // A follower's own lag is not its writers' business: the leader decides.
        m.current_leader = Some(2);
        assert_eq!(admission.check_lag(&m), Ok(()));
        let ForwardReply::Failed { kind, message } = Refusal::ApplyLag.reply(&limits) else { panic!() };
        assert_eq!(kind, FailKind::Overloaded);
        assert!(message.contains("10 log entries"), "{message}");
    }
}
