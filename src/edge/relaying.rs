//! What a relay decides while it follows a stream for its players, as a state machine
//! with no sockets and no clock ([`Relaying`]): when to look the owner up and when to
//! wait for the claim to change instead, when a publishing generation starts, changes
//! session or ends, and how long to pause after a failure. The caller
//! ([`super::streams`]) carries out each [`Output`] (a lookup, a wait on the claims
//! feed, following one owner until that ends) and feeds back its answer.

use std::time::Duration;

use super::control::Owner;
use crate::backoff::Backoff;

/// After losing its owner's link, how long a relay waits for the claim to move before
/// trying the same owner again (its link may just have blinked).
pub const LOST_OWNER_WAIT: Duration = Duration::from_millis(1500);
/// After the owner said the stream ended, how long to wait for a claim change before
/// looking again.
pub const ENDED_WAIT: Duration = Duration::from_millis(500);
/// How long one wait on the claims feed lasts before looking again.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);
/// Pause after a failed lookup, and the longest pause after refused subscriptions.
pub const RELAY_RETRY: Duration = Duration::from_millis(200);
/// The first pause after a refused subscription; doubles up to [`RELAY_RETRY`]. A
/// refusal is mostly an owner that has not applied the claim the relay followed it
/// for (a move the relay learned from an origin ahead of it), which takes it
/// milliseconds: a flat 200 ms pause was most of a player's longest stall through a
/// planned move (docs/failover.md, "Moves, a drain, a rolling restart and a kill under
/// load").
pub const REFUSED_FIRST_RETRY: Duration = Duration::from_millis(10);

/// How following one owner ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Followed {
    /// The claim moved to this epoch (another owner, or another session).
    Moved(u64),
    /// The owner's link went down: wait a little for the claim to move.
    LostOwner,
    /// The owner said the stream ended: released, or moving.
    Ended,
    /// The owner would not take the subscription (not applied there yet).
    Refused,
}

/// Something that happened to the relay.
#[derive(Debug)]
pub enum Input {
    /// Answer to [`Output::Lookup`] or [`Output::WaitChange`]: the claim and its
    /// owner, `None` when the stream is not published.
    Found(Result<Option<Owner>, String>),
    /// [`Output::Follow`] ended.
    Followed(Followed),
    /// [`Output::Pause`] ended.
    Woke,
}

/// What the caller does next, in order; the last output of every decision is the one
/// request whose answer is the next [`Input`].
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Ask any origin who owns the stream now.
    Lookup,
    /// Wait on the claims feed until the claim differs from `known`, at most `wait`.
    WaitChange { known: Option<u64>, wait: Duration },
    /// Sleep, then [`Input::Woke`].
    Pause(Duration),
    /// A publishing generation starts: a new hub for the players, its session's.
    StartGeneration(String),
    /// Another publishing session took over the generation: new timestamps, same
    /// players (the continuity filter starts a new session).
    NewSession(String),
    /// The stream is not published any more: the generation ends for its players.
    EndGeneration,
    /// Subscribe at this owner and relay until that ends.
    Follow(Owner),
    /// Count a relay failover (`edge_failovers_total{side="relay"}`).
    CountFailover,
}

/// One relay's decisions.
#[derive(Debug)]
pub struct Relaying {
    /// The claim epoch last seen.
    known: Option<u64>,
    /// Wait for the claim to change (this long at most) rather than look it up now.
    wait: Option<Duration>,
    /// The session of the current generation, if one is under way.
    session: Option<String>,
    /// Pauses after refused subscriptions in a row; reset by one that was taken.
    refused: Backoff,
}

impl Default for Relaying {
    fn default() -> Self {
        Relaying { known: None, wait: None, session: None, refused: Backoff::new(REFUSED_FIRST_RETRY, RELAY_RETRY) }
    }
}

impl Relaying {
    /// The first decision: look the owner up.
    pub fn start(&mut self) -> Vec<Output> {
        vec![self.find()]
    }

    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        match input {
            Input::Found(Ok(Some(owner))) => {
                self.known = Some(owner.claim.epoch);
                let mut out = Vec::new();
                match &self.session {
                    None => out.push(Output::StartGeneration(owner.claim.session.clone())),
                    Some(session) if *session != owner.claim.session => {
                        out.push(Output::NewSession(owner.claim.session.clone()))
                    }
                    Some(_) => {}
                }
                self.session = Some(owner.claim.session.clone());
                out.push(Output::Follow(owner));
                out
            }
            Input::Found(Ok(None)) => {
                // Not published (or released): the generation, if any, is over.
                let mut out = Vec::new();
                if self.session.take().is_some() {
                    out.push(Output::EndGeneration);
                }
                self.known = None;
                self.wait = Some(WATCH_WAIT);
                out.push(self.find());
                out
            }
            Input::Found(Err(e)) => {
                tracing::debug!(error = %e, "owner lookup failed");
                vec![Output::Pause(RELAY_RETRY)]
            }
            Input::Followed(Followed::Moved(next)) => {
                self.refused.reset();
                self.known = Some(next);
                self.wait = None;
                vec![Output::CountFailover, self.find()]
            }
            Input::Followed(Followed::LostOwner) => {
                self.refused.reset();
                self.wait = Some(LOST_OWNER_WAIT);
                vec![self.find()]
            }
            Input::Followed(Followed::Ended) => {
                self.refused.reset();
                self.wait = Some(ENDED_WAIT);
                vec![self.find()]
            }
            Input::Followed(Followed::Refused) => {
                self.wait = None;
                vec![Output::Pause(self.refused.next_pause())]
            }
            Input::Woke => vec![self.find()],
        }
    }

    fn find(&self) -> Output {
        match self.wait {
            Some(wait) => Output::WaitChange { known: self.known, wait },
            None => Output::Lookup,
        }
    }
}

#[cfg(test)]
mod tests {
    use raftcast_raft::command::StreamClaim;

    use super::*;

    fn owner(node: u64, epoch: u64, session: &str) -> Owner {
        let claim = StreamClaim { owner: node, epoch, edge: "edge-1".into(), session: session.into(), since_ms: 0 };
        Owner { claim, media: format!("127.0.0.1:{}", 9100 + node).parse().unwrap() }
    }

    #[test]
    fn a_relay_starts_a_generation_at_the_owner_and_follows_a_move_at_once() {
        let mut r = Relaying::default();
        assert_eq!(r.start(), vec![Output::Lookup]);
        assert_eq!(
            r.handle(Input::Found(Ok(Some(owner(1, 10, "s1"))))),
            vec![Output::StartGeneration("s1".into()), Output::Follow(owner(1, 10, "s1"))]
        );
        // The claim moved (the owner died, the leader moved it): look it up now, no wait.
        assert_eq!(r.handle(Input::Followed(Followed::Moved(12))), vec![Output::CountFailover, Output::Lookup]);
        // Same session on the new owner: the same generation goes on.
        assert_eq!(r.handle(Input::Found(Ok(Some(owner(2, 12, "s1"))))), vec![Output::Follow(owner(2, 12, "s1"))]);
    }

    #[test]
    fn a_lost_owner_is_given_time_for_the_claim_to_move_before_it_is_tried_again() {
        let mut r = Relaying::default();
        r.start();
        r.handle(Input::Found(Ok(Some(owner(1, 10, "s1")))));
        assert_eq!(
            r.handle(Input::Followed(Followed::LostOwner)),
            vec![Output::WaitChange { known: Some(10), wait: LOST_OWNER_WAIT }]
        );
        // The wait ended with the claim unchanged (the link blinked): the same owner.
        assert_eq!(r.handle(Input::Found(Ok(Some(owner(1, 10, "s1"))))), vec![Output::Follow(owner(1, 10, "s1"))]);
        // The owner ended the stream: wait a little for a claim change.
        assert_eq!(
            r.handle(Input::Followed(Followed::Ended)),
            vec![Output::WaitChange { known: Some(10), wait: ENDED_WAIT }]
        );
    }

    #[test]
    fn a_release_ends_the_generation_and_a_new_session_keeps_the_players() {
        let mut r = Relaying::default();
        r.start();
        r.handle(Input::Found(Ok(Some(owner(1, 10, "s1")))));
        r.handle(Input::Followed(Followed::Ended));
        assert_eq!(
            r.handle(Input::Found(Ok(None))),
            vec![Output::EndGeneration, Output::WaitChange { known: None, wait: WATCH_WAIT }]
        );
        // Nothing published yet: keep waiting, nothing to end.
        assert_eq!(r.handle(Input::Found(Ok(None))), vec![Output::WaitChange { known: None, wait: WATCH_WAIT }]);
        // A publisher comes back: a new generation.
        assert_eq!(
            r.handle(Input::Found(Ok(Some(owner(2, 20, "s2"))))),
            vec![Output::StartGeneration("s2".into()), Output::Follow(owner(2, 20, "s2"))]
        );
        // A reconnecting publisher takes over without a release in between: the same
        // generation, a new session.
        r.handle(Input::Followed(Followed::Moved(25)));
        assert_eq!(
            r.handle(Input::Found(Ok(Some(owner(2, 25, "s3"))))),
            vec![Output::NewSession("s3".into()), Output::Follow(owner(2, 25, "s3"))]
        );
    }

    #[test]
    fn refusals_in_a_row_pause_from_milliseconds_up_to_the_retry_and_a_taken_subscription_resets() {
        let ms = Duration::from_millis;
        let mut r = Relaying::default();
        r.start();
        r.handle(Input::Found(Ok(Some(owner(1, 10, "s1")))));
        // The claim moved to an origin that has not applied it yet: it refuses a few
        // times, the pauses short at first.
        r.handle(Input::Followed(Followed::Moved(12)));
        let mut pauses = Vec::new();
        for _ in 0..7 {
            r.handle(Input::Found(Ok(Some(owner(2, 12, "s1")))));
            let out = r.handle(Input::Followed(Followed::Refused));
            let [Output::Pause(p)] = out[..] else { panic!("{out:?}") };
            pauses.push(p);
            assert_eq!(r.handle(Input::Woke), vec![Output::Lookup]);
        }
        assert_eq!(pauses, [ms(10), ms(20), ms(40), ms(80), ms(160), ms(200), ms(200)]);
        // Taken at last, then moved again: the next refusal starts short again.
        r.handle(Input::Found(Ok(Some(owner(2, 12, "s1")))));
        r.handle(Input::Followed(Followed::Moved(14)));
        r.handle(Input::Found(Ok(Some(owner(3, 14, "s1")))));
        assert_eq!(r.handle(Input::Followed(Followed::Refused)), vec![Output::Pause(REFUSED_FIRST_RETRY)]);
    }

    #[test]
    fn failures_pause_and_keep_the_way_of_looking() {
        let mut r = Relaying::default();
        r.start();
        assert_eq!(r.handle(Input::Found(Err("no origin answered".into()))), vec![Output::Pause(RELAY_RETRY)]);
        assert_eq!(r.handle(Input::Woke), vec![Output::Lookup]);
        r.handle(Input::Found(Ok(Some(owner(1, 10, "s1")))));
        // Refused (the owner has not applied the claim yet): pause, then look up.
        assert_eq!(r.handle(Input::Followed(Followed::Refused)), vec![Output::Pause(REFUSED_FIRST_RETRY)]);
        assert_eq!(r.handle(Input::Woke), vec![Output::Lookup]);
        // A failed wait on the feed pauses and then waits again, with what it knew.
        r.handle(Input::Found(Ok(Some(owner(1, 10, "s1")))));
        r.handle(Input::Followed(Followed::LostOwner));
        assert_eq!(r.handle(Input::Found(Err("feed restarting".into()))), vec![Output::Pause(RELAY_RETRY)]);
        assert_eq!(r.handle(Input::Woke), vec![Output::WaitChange { known: Some(10), wait: LOST_OWNER_WAIT }]);
    }
}
