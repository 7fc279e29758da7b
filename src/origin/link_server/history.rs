//! Which claim of each stream came before its current one, as this origin saw the
//! claims applied: the owner of a new claim continues the HLS numbering of the claim
//! before it, and asks that claim's owner where it stood (`LinkContext::attach`).
//!
//! Fed the applied claim changes in log order; knows no sockets, hubs or clock.

use raftcast_raft::command::StreamClaim;
use raftcast_raft::{NodeId, StreamKey};

use super::recent::Recent;

/// Streams whose last claim an origin keeps (released ones included): the oldest
/// forgotten first past this many. About a hundred bytes each.
pub const CLAIMS_SEEN: usize = 16_384;

/// A claim as this origin saw it applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenClaim {
    pub owner: NodeId,
    pub epoch: u64,
    /// The publishing session that holds it: (edge, session).
    session: (String, String),
}

impl SeenClaim {
    /// Held by the same publishing session as `claim`.
    pub fn same_session(&self, claim: &StreamClaim) -> bool {
        self.session.0 == claim.edge && self.session.1 == claim.session
    }
}

impl From<&StreamClaim> for SeenClaim {
    fn from(c: &StreamClaim) -> Self {
        SeenClaim { owner: c.owner, epoch: c.epoch, session: (c.edge.clone(), c.session.clone()) }
    }
}

/// A stream's latest claim, and the one before it when this origin saw both applied.
#[derive(Debug)]
struct Seen {
    latest: SeenClaim,
    before: Option<SeenClaim>,
}

/// What came before a claim ([`ClaimHistory::before`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// The changes up to the claim have not been followed here yet: ask again shortly.
    NotYet,
    /// Not known here: this origin may have missed a change in between (it restarted,
    /// its change feed lagged or was replaced), forgot the stream, or the claim is no
    /// longer the stream's latest.
    Unknown,
    /// The claim before it was held by the same publishing session (a failover, a
    /// drain, a claim again after a release): that session's edge numbers on by itself.
    SameSession,
    /// The claim in force right before it (released since, or replaced by it).
    Claim(SeenClaim),
}

/// Each stream's last two claims, as applied here, for at most [`CLAIMS_SEEN`] streams.
#[derive(Debug)]
pub struct ClaimHistory {
    streams: Recent<StreamKey, Seen>,
    /// Index of the last change followed: every claim change up to it is in `streams`
    /// (unless forgotten).
    followed: u64,
}

impl Default for ClaimHistory {
    fn default() -> Self {
        ClaimHistory { streams: Recent::new(CLAIMS_SEEN), followed: 0 }
    }
}

impl ClaimHistory {
    /// `stream`'s claim changed to `claim` (`None`: released). Changes must come in log
    /// order, every one of them; after a gap, [`ClaimHistory::resync`] first.
    pub fn applied(&mut self, stream: &StreamKey, claim: Option<&StreamClaim>) {
        // A release keeps the latest claim: it is what the next claim comes after.
        let Some(claim) = claim else { return };
        let seen = SeenClaim::from(claim);
        let latest = self.streams.get(stream).map(|s| &s.latest);
        if latest.is_some_and(|l| l.epoch >= seen.epoch) {
            return; // already seen
        }
        let before = latest.cloned();
        self.streams.insert(stream.clone(), Seen { latest: seen, before });
    }

    /// Every change up to `index` was given to [`ClaimHistory::applied`].
    pub fn followed(&mut self, index: u64) {
        self.followed = self.followed.max(index);
    }

    /// Changes up to `index` may have been missed: nothing known so far can say what
    /// came before a later claim.
    pub fn resync(&mut self, index: u64) {
        self.streams.clear();
        self.followed(index);
    }

    /// Up to which index changes were followed.
    pub fn followed_through(&self) -> u64 {
        self.followed
    }

    /// `stream`'s claim right before its latest one, when that latest one has `epoch`
    /// and this origin saw both applied; unlike [`ClaimHistory::before`], whether the
    /// changes were all followed up to `epoch` is not asked (the follower itself calls
    /// this while it handles the change).
    pub fn replaced(&self, stream: &StreamKey, epoch: u64) -> Option<&SeenClaim> {
        match self.streams.get(stream) {
            Some(Seen { latest, before }) if latest.epoch == epoch => before.as_ref(),
            _ => None,
        }
    }

    /// What came before `stream`'s claim of `epoch`.
    pub fn before(&self, stream: &StreamKey, epoch: u64) -> Before {
        if self.followed < epoch {
            return Before::NotYet;
        }
        match self.streams.get(stream) {
            Some(Seen { latest, before: Some(before) }) if latest.epoch == epoch => {
                if before.session == latest.session {
                    Before::SameSession
                } else {
                    Before::Claim(before.clone())
                }
            }
            _ => Before::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new("live", name).unwrap()
    }

    fn claim(owner: NodeId, epoch: u64, session: &str) -> StreamClaim {
        StreamClaim { owner, epoch, edge: "edge-1".into(), session: session.into(), since_ms: 0 }
    }

    fn seen(owner: NodeId, epoch: u64, session: &str) -> SeenClaim {
        SeenClaim::from(&claim(owner, epoch, session))
    }

    #[test]
    fn the_claim_before_is_kept_across_a_release() {
        let mut h = ClaimHistory::default();
        let s = key("s");
        h.applied(&s, Some(&claim(2, 5, "a")));
        h.applied(&s, Some(&claim(3, 7, "a"))); // moved: same session
        h.followed(7);
        assert_eq!(h.before(&s, 7), Before::SameSession);
        h.applied(&s, None);
        h.followed(8);
        h.applied(&s, Some(&claim(1, 9, "b")));
        assert_eq!(h.before(&s, 9), Before::NotYet, "index 9 not followed yet");
        h.followed(9);
        assert_eq!(h.before(&s, 9), Before::Claim(seen(3, 7, "a")), "the released claim came before");
        assert_eq!(h.before(&s, 7), Before::Unknown, "7 is not the latest claim any more");
        assert_eq!(h.before(&key("other"), 9), Before::Unknown);
    }

    #[test]
    fn the_replaced_claim_is_known_while_its_change_is_being_followed() {
        let mut h = ClaimHistory::default();
        let s = key("s");
        h.applied(&s, Some(&claim(2, 5, "a")));
        h.applied(&s, Some(&claim(3, 7, "a")));
        // The follower handles index 7 now: `before` would say "not yet".
        assert_eq!(h.before(&s, 7), Before::NotYet);
        let replaced = h.replaced(&s, 7).unwrap();
        assert_eq!(replaced, &seen(2, 5, "a"));
        assert!(replaced.same_session(&claim(3, 7, "a")));
        assert!(!replaced.same_session(&claim(3, 7, "b")));
        assert_eq!(h.replaced(&s, 5), None, "5 is not the latest claim");
    }

    #[test]
    fn only_the_claim_right_before_is_known() {
        let mut h = ClaimHistory::default();
        let s = key("s");
        h.applied(&s, Some(&claim(2, 5, "a")));
        h.applied(&s, Some(&claim(2, 6, "b"))); // a takeover on the same origin
        h.applied(&s, Some(&claim(3, 8, "c")));
        h.followed(8);
        // Whoever numbered under epoch 6 numbered after epoch 5's marks: continuing
        // after 5's would reuse numbers. Only 6 may be continued after.
        assert_eq!(h.before(&s, 8), Before::Claim(seen(2, 6, "b")));
        // A change seen twice changes nothing.
        h.applied(&s, Some(&claim(3, 8, "c")));
        assert_eq!(h.before(&s, 8), Before::Claim(seen(2, 6, "b")));
    }

    #[test]
    fn after_a_resync_nothing_before_is_known() {
        let mut h = ClaimHistory::default();
        let s = key("s");
        h.applied(&s, Some(&claim(2, 5, "a")));
        h.followed(5);
        // The change feed lagged: epoch 7's claim (and whatever else) was missed.
        h.resync(9);
        h.applied(&s, Some(&claim(3, 10, "c")));
        h.followed(10);
        assert_eq!(h.before(&s, 10), Before::Unknown, "what came before 10 may be 7, not 5");
        // Changes followed since the resync are known again.
        h.applied(&s, None);
        h.applied(&s, Some(&claim(1, 12, "d")));
        h.followed(12);
        assert_eq!(h.before(&s, 12), Before::Claim(seen(3, 10, "c")));
    }

    #[test]
    fn the_history_is_bounded_and_forgets_the_oldest() {
        let mut h = ClaimHistory::default();
        for i in 0..(CLAIMS_SEEN as u64 + 10) {
            h.applied(&key(&format!("s{i}")), Some(&claim(1, i + 1, "a")));
        }
        let first = key("s0");
        h.applied(&first, Some(&claim(2, CLAIMS_SEEN as u64 + 20, "b")));
        h.followed(CLAIMS_SEEN as u64 + 20);
        assert_eq!(h.streams.len(), CLAIMS_SEEN);
        assert_eq!(h.before(&first, CLAIMS_SEEN as u64 + 20), Before::Unknown, "s0's first claim was forgotten");
        let newest = key(&format!("s{}", CLAIMS_SEEN + 9));
        h.applied(&newest, Some(&claim(2, CLAIMS_SEEN as u64 + 30, "b")));
        h.followed(CLAIMS_SEEN as u64 + 30);
        assert_eq!(h.before(&newest, CLAIMS_SEEN as u64 + 30), Before::Claim(seen(1, CLAIMS_SEEN as u64 + 10, "a")));
    }
}
