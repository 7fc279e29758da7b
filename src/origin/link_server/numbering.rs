//! Where a new publishing session's HLS numbering starts: after the last mark of the
//! claim right before its own ([`super::history`]), whichever origin owned that claim,
//! or from the wall clock when that mark is not known for sure (`docs/hls.md`,
//! "Numbering").
//!
//! The rule that keeps numbers from being reused: a mark is only ever continued after
//! when it was stamped under the epoch of the claim right before the new one. Every
//! number handed out since that claim's session is in that mark; an older mark would
//! miss whatever the sessions after it numbered.
//!
//! Knows no sockets and no hubs: the registry looks marks up, the origin's peer route
//! (`crate::origin::handover`) asks other origins.

use std::sync::Arc;

use futures::future::BoxFuture;
use raftcast_raft::{NodeId, StreamKey};

use super::history::{Before, SeenClaim};
use super::recent::Recent;
use crate::hls::mark::Continuation;

/// Streams whose last mark an origin remembers after their hub is gone (the publisher
/// left, the claim was released or moved away): one entry per stream, the oldest
/// forgotten first past this many. A few dozen bytes each.
pub const REMEMBERED_MARKS: usize = 16_384;

/// The last HLS marks of streams whose hub ended here, each with the epoch of the
/// claim it was stamped under. Bounded by [`REMEMBERED_MARKS`].
#[derive(Debug)]
pub(super) struct Remembered {
    marks: Recent<StreamKey, (Continuation, u64)>,
}

impl Default for Remembered {
    fn default() -> Self {
        Remembered { marks: Recent::new(REMEMBERED_MARKS) }
    }
}

impl Remembered {
    /// `mark` is where `stream`'s numbering stood when its hub ended, stamped under `epoch`.
    pub fn keep(&mut self, stream: &StreamKey, mark: Continuation, epoch: u64) {
        self.marks.insert(stream.clone(), (mark, epoch));
    }

    /// `stream`'s remembered mark if it was stamped under `epoch`.
    pub fn get(&self, stream: &StreamKey, epoch: u64) -> Option<Continuation> {
        self.marks.get(stream).filter(|(_, e)| *e == epoch).map(|(m, _)| *m)
    }
}

/// A question to the owner of the claim before a new one: its last mark of `stream`
/// stamped under `epoch`, final once it has applied the new claim, `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub owner: NodeId,
    pub stream: StreamKey,
    pub epoch: u64,
    pub after: u64,
}

/// Puts an [`Ask`] to its owner: `Ok(None)` when it has no mark under that epoch, `Err`
/// with the reason when there is no usable answer. Bounded in time by the caller.
pub type AskPrevious = Arc<dyn Fn(Ask) -> BoxFuture<'static, Result<Option<Continuation>, String>> + Send + Sync>;

/// What the owner of the claim before said ([`super::LinkContext::attach`] checks that
/// it is still the claim before).
#[derive(Debug, Clone)]
pub struct Answered {
    pub from: SeenClaim,
    pub mark: Result<Option<Continuation>, String>,
}

/// Why an origin cannot tell its last mark under a claim for sure
/// ([`super::LinkContext::handed_over_mark`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFinal {
    /// The later claim named does not come after the claim asked about.
    #[error("epoch {after} does not come after {epoch}")]
    Order { epoch: u64, after: u64 },
    /// The later claim was not applied here within the wait: the claim asked about may
    /// still be in force here, its publisher still numbering.
    #[error("epoch {after} not applied here within {wait:?}")]
    Behind { after: u64, wait: std::time::Duration },
    /// A publisher under the claim asked about is still attached here.
    #[error("a publisher under epoch {epoch} is still attached here")]
    Attached { epoch: u64 },
}

/// How a new publisher's session is numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numbering {
    /// Right after this mark: msn + 1, discontinuity + 1, the timeline after its end.
    After(Continuation),
    /// By the publishing edge's own stamper: the claim before was its own session's.
    SameSession,
    /// From the wall clock, for this reason.
    WallClock(String),
}

impl std::fmt::Display for Numbering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Numbering::After(c) => write!(f, "after msn {} discontinuity {}", c.msn, c.discontinuity),
            Numbering::SameSession => f.write_str("by the same session"),
            Numbering::WallClock(why) => write!(f, "from the wall clock: {why}"),
        }
    }
}

/// The numbering of a session whose claim had `before` before it, on origin `me`.
/// `local(epoch)` is this origin's own mark stamped under `epoch`; `answered` is what
/// the previous owner said, if it was asked.
pub fn decide(
    me: NodeId,
    before: Before,
    local: impl FnOnce(u64) -> Option<Continuation>,
    answered: Option<Answered>,
) -> Numbering {
    let wall = |why: String| Numbering::WallClock(why);
    match before {
        Before::NotYet => wall("the claim's change was not followed here in time".into()),
        Before::Unknown => wall("the claim before it is not known here".into()),
        Before::SameSession => Numbering::SameSession,
        Before::Claim(prev) if prev.owner == me => match local(prev.epoch) {
            Some(mark) => Numbering::After(mark),
            None => wall(format!("no mark here under epoch {}", prev.epoch)),
        },
        Before::Claim(prev) => match answered {
            Some(Answered { from, mark }) if from == prev => match mark {
                Ok(Some(mark)) => Numbering::After(mark),
                Ok(None) => wall(format!("origin {} has no mark under epoch {}", prev.owner, prev.epoch)),
                Err(why) => wall(format!("origin {} gave no mark under epoch {}: {why}", prev.owner, prev.epoch)),
            },
            _ => wall(format!("origin {} was not asked for epoch {}", prev.owner, prev.epoch)),
        },
    }
}

#[cfg(test)]
mod tests {
    use raftcast_raft::command::StreamClaim;

    use super::*;

    fn mark(msn: u64) -> Continuation {
        Continuation { msn, discontinuity: 3, time_ms: 1_000 }
    }

    fn claim(owner: NodeId, epoch: u64) -> SeenClaim {
        SeenClaim::from(&StreamClaim { owner, epoch, edge: "e".into(), session: "s".into(), since_ms: 0 })
    }

    #[test]
    fn remembered_marks_are_bounded_and_keep_their_epoch() {
        let mut r = Remembered::default();
        for i in 0..(REMEMBERED_MARKS as u64 + 10) {
            r.keep(&StreamKey::new("live", &format!("s{i}")).unwrap(), mark(i), i);
        }
        assert_eq!(r.marks.len(), REMEMBERED_MARKS);
        assert_eq!(r.get(&StreamKey::new("live", "s0").unwrap(), 0), None, "the oldest went first");
        let newest = StreamKey::new("live", &format!("s{}", REMEMBERED_MARKS + 9)).unwrap();
        let epoch = REMEMBERED_MARKS as u64 + 9;
        assert_eq!(r.get(&newest, epoch), Some(mark(epoch)));
        assert_eq!(r.get(&newest, epoch - 1), None, "a mark is only had under its own epoch");
    }

    #[test]
    fn a_mark_is_continued_after_only_under_the_epoch_of_the_claim_before() {
        let local_at = |e: u64| move |epoch: u64| (epoch == e).then(|| mark(40));
        // Our own claim came before: our mark under its epoch.
        assert_eq!(decide(1, Before::Claim(claim(1, 7)), local_at(7), None), Numbering::After(mark(40)));
        // We hold a mark, but of an older claim: a claim in between may have numbered.
        let older = decide(1, Before::Claim(claim(1, 7)), local_at(5), None);
        assert!(matches!(older, Numbering::WallClock(_)), "{older:?}");
        // Another origin's claim came before: only its answer for that claim counts.
        let answered = |from, mark| Some(Answered { from, mark });
        let asked = answered(claim(2, 7), Ok(Some(mark(50))));
        assert_eq!(decide(1, Before::Claim(claim(2, 7)), local_at(7), asked), Numbering::After(mark(50)));
        let stale = answered(claim(2, 6), Ok(Some(mark(50))));
        assert!(matches!(decide(1, Before::Claim(claim(2, 7)), local_at(7), stale), Numbering::WallClock(_)));
        let none = answered(claim(2, 7), Ok(None));
        assert!(matches!(decide(1, Before::Claim(claim(2, 7)), local_at(7), none), Numbering::WallClock(_)));
        let dead = answered(claim(2, 7), Err("connection refused".into()));
        let n = decide(1, Before::Claim(claim(2, 7)), local_at(7), dead);
        assert!(n.to_string().contains("connection refused"), "the reason is kept: {n}");
        assert!(matches!(decide(1, Before::Claim(claim(2, 7)), local_at(7), None), Numbering::WallClock(_)));
        // Not known, or the edge's own session: nothing to continue after here.
        assert!(matches!(decide(1, Before::Unknown, local_at(7), None), Numbering::WallClock(_)));
        assert!(matches!(decide(1, Before::NotYet, local_at(7), None), Numbering::WallClock(_)));
        assert_eq!(decide(1, Before::SameSession, local_at(7), None), Numbering::SameSession);
    }
}
