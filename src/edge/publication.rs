//! What a publication decides once it publishes, as a state machine with no sockets and
//! no clock of its own ([`Publishing`]): where each frame goes, when the owner is lost,
//! how a new owner is found (follow the leader's move, ask for one, claim again after a
//! release), when it is fenced, and what is released at the end. The caller
//! ([`super::streams`]) feeds it [`Input`]s with the time and carries out the
//! [`Output`]s: link writes, control requests, one at a time, and wake-ups.
//!
//! Tests drive it through every path `tests/failover.rs` takes with real processes
//! (owner lost, moved by the leader, fenced, a leader change mid-move, a release
//! meanwhile, an outage longer than what is retained) in simulated time, in
//! milliseconds.

use std::time::{Duration, Instant};

use raftcast_raft::command::StreamClaim;
use raftcast_raft::{NodeId, Rejection, Response, StreamKey};

use super::control::Owner;
use crate::backoff::Backoff;
use crate::hls::stamper::Stamper;
use crate::media::retain::Retained;
use crate::media::Frame;

/// First pause between attempts to find a new owner; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Something that happened to the publication.
#[derive(Debug)]
pub enum Input {
    /// The owner's channel is unusable: the link went down, the owner refused (fenced
    /// us), the channel closed, or a frame from [`Publishing::frame`] could not be
    /// written.
    OwnerLost(String),
    /// The claims feed says the claim moved past our epoch.
    ClaimMoved(u64),
    /// Answer to [`Output::Lookup`].
    Looked(Result<Option<Owner>, String>),
    /// Answer to [`Output::Reassign`].
    Reassigned(Result<Response, String>),
    /// Answer to [`Output::Claim`].
    Claimed(Result<Response, String>),
    /// Answer to [`Output::LookupAtLeast`].
    Confirmed(Result<Owner, String>),
    /// Answer to [`Output::Attach`]: publishing on the new owner's channel.
    Attached(Result<(), String>),
    /// The wake-up asked for with [`Output::WakeAt`].
    Woke,
    /// The edge is shutting down.
    Shutdown,
    /// The publisher is gone.
    PublisherLeft,
}

/// Something the caller must do, in order.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Write what is retained on the channel just attached (headers, then frames from a
    /// keyframe on); a failure only counts the frame as dropped.
    Replay(Vec<Frame>),
    /// Close the current owner's channel.
    CloseChannel,
    /// End the stream on the previous owner's channel, behind the media queued on it,
    /// and close it: a make-before-break move attached to the new owner.
    ClosePrevious,
    /// Follow the claim on the claims feed past this epoch ([`Input::ClaimMoved`]).
    WatchClaim(u64),
    /// Ask any origin who owns the stream ([`Input::Looked`]).
    Lookup,
    /// Ask the leader to move the stream away from `away_from` ([`Input::Reassigned`]).
    Reassign { epoch: u64, away_from: NodeId },
    /// Claim the stream again for this session ([`Input::Claimed`]).
    Claim,
    /// Wait for an origin that has applied `epoch` and ask it ([`Input::Confirmed`]).
    LookupAtLeast(u64),
    /// Open a channel on the owner's link and publish under its epoch
    /// ([`Input::Attached`]).
    Attach(Owner),
    /// Like [`Output::Attach`], on the owner the stream was lost on, and only if its
    /// link is up now (answer [`Input::Attached`] with an error at once otherwise):
    /// the leader could not move the stream (no other origin is live, or no leader
    /// answered), and the link that went down may be back.
    Reattach(Owner),
    /// Feed [`Input::Woke`] at this time.
    WakeAt(Instant),
    /// Publishing on a new owner, `took` after the old one was lost.
    Moved { owner: NodeId, epoch: u64, took: Duration, resent: usize },
    /// Another session holds the stream: tell the publisher, release nothing.
    Fenced(String),
    /// End the stream on the owner (behind the media already queued).
    Unpublish,
    /// Release the claim at this epoch.
    Release(u64),
}

/// Where the publication stands.
#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Publishing on `owner` at `epoch`.
    Attached,
    /// The owner was lost at `since`; `lost` is the origin to move away from. `old`:
    /// the claim moved with the old owner still up (a planned move), whose channel
    /// stays open and takes the frames until the new owner has them
    /// (make-before-break).
    Moving { since: Instant, lost: NodeId, step: Step, old: bool },
    /// Fenced, stopped, or the publisher left.
    Ended,
}

/// The request a move is waiting for.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Looking,
    /// Asked to move the stream off this owner (ours, at our epoch).
    Reassigning(Owner),
    Claiming,
    Confirming,
    Attaching(Owner),
    Pausing,
}

/// One publishing session after its first owner accepted it.
#[derive(Debug)]
pub struct Publishing {
    stream: StreamKey,
    me: String,
    session: String,
    epoch: u64,
    owner: NodeId,
    state: State,
    retained: Retained,
    /// Cuts and numbers this session's HLS segments; kept across owner changes, so
    /// frames re-sent to a new owner carry the marks they had.
    stamper: Stamper,
    pause: Backoff,
}

impl Publishing {
    /// A session of `me` (edge) and `session` publishing `stream`, accepted by `owner`
    /// at `epoch`.
    pub fn new(
        stream: StreamKey,
        me: String,
        session: String,
        epoch: u64,
        owner: NodeId,
        retained: Retained,
        stamper: Stamper,
    ) -> Publishing {
        Publishing {
            stream,
            me,
            session,
            epoch,
            owner,
            state: State::Attached,
            retained,
            stamper,
            pause: Backoff::new(FIRST_PAUSE, MAX_PAUSE),
        }
    }

    pub fn stream(&self) -> &StreamKey {
        &self.stream
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    #[cfg(test)]
    pub fn owner(&self) -> NodeId {
        self.owner
    }

    /// Looking for a new owner.
    pub fn is_moving(&self) -> bool {
        matches!(self.state, State::Moving { .. })
    }

    /// Moving, with the old owner's channel still taking the frames.
    pub fn keeps_old(&self) -> bool {
        matches!(self.state, State::Moving { old: true, .. })
    }

    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// The owner says whether a new owner will need the HLS window's frames
    /// (`RetainWindow`). While moving, a "no" is ignored: it comes from an owner the
    /// stream is leaving, whose edges packaging HLS re-subscribed at the new one
    /// already, and the new owner says what it needs once attached. Returns whether
    /// anything changed.
    pub fn retain_window(&mut self, keep: bool) -> bool {
        if !keep && self.state != State::Attached {
            return false;
        }
        self.retained.keep_window(keep)
    }

    /// Frames lost because the outage outlasted what is retained.
    pub fn lost(&self) -> u64 {
        self.retained.lost()
    }

    /// Takes a frame from the publisher, with the wall clock (ms since the Unix epoch)
    /// when it arrived: marks it and keeps it for a new owner. Returns it when it is to
    /// be written on the current owner's channel now (a failure to write it is
    /// [`Input::OwnerLost`]). Every frame passes here, so it allocates nothing beyond
    /// what it keeps.
    pub fn frame(&mut self, mut frame: Frame, wall_ms: u64) -> Option<Frame> {
        if self.state == State::Ended {
            return None;
        }
        frame.hls = self.stamper.mark(&frame, wall_ms);
        let live = self.state == State::Attached || self.keeps_old();
        self.retained.push(frame.clone(), live);
        live.then_some(frame)
    }

    /// Takes `input` at `now`; returns what to do.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::OwnerLost(why) if self.state == State::Attached => {
                tracing::warn!(stream = %self.stream, epoch = self.epoch, owner = self.owner, why, "lost the owner; moving");
                self.start_moving(now, &mut out);
            }
            Input::ClaimMoved(epoch) if self.state == State::Attached && epoch > self.epoch => {
                // The owner is still up (it answered or its link is fine): a planned
                // move, a drain, a rebalance, or a leader that gave up on it. It keeps
                // taking our frames while we attach to the new one, which is asked for
                // by the new claim's epoch: a lookup could reach an origin that has
                // not applied it yet.
                tracing::info!(
                    stream = %self.stream, epoch = self.epoch, owner = self.owner, moved_to = epoch,
                    "the claim moved on; moving, make-before-break"
                );
                self.pause.reset();
                self.state = State::Moving { since: now, lost: self.owner, step: Step::Confirming, old: true };
                out.push(Output::LookupAtLeast(epoch));
            }
            Input::OwnerLost(why) if self.keeps_old() => {
                // The old owner stopped taking frames before the new one has them (it
                // gave up waiting, restarted, or is an older version): from now on the
                // frames are only kept for the new owner.
                tracing::warn!(stream = %self.stream, owner = self.owner, why, "lost the old owner while moving");
                if let State::Moving { old, .. } = &mut self.state {
                    *old = false;
                }
                out.push(Output::CloseChannel);
            }
            Input::OwnerLost(_) | Input::ClaimMoved(_) => {}
            Input::Looked(answer) if self.step() == Some(&Step::Looking) => self.looked(answer, now, &mut out),
            Input::Reassigned(answer) if matches!(self.step(), Some(Step::Reassigning(_))) => match answer {
                Ok(Response::Claimed(c)) if self.ours(&c) => self.confirm(c.epoch, &mut out),
                other => {
                    let Some(Step::Reassigning(lost)) = self.step().cloned() else { return out };
                    // Nothing moved: a lone origin has nowhere to move to, and a link
                    // that went down under load may be back, so try the same owner
                    // (at once, if its link is up) before looking again. Without this a
                    // one-origin cluster kept the stream off its owner for good
                    // (bench-saturation.sh at 12,000 players: one link blip, then no
                    // frame to any player).
                    tracing::debug!(stream = %self.stream, ?other, "reassign changed nothing; trying the same owner");
                    self.set_step(Step::Attaching(lost.clone()));
                    out.push(Output::Reattach(lost));
                }
            },
            Input::Claimed(answer) if self.step() == Some(&Step::Claiming) => match answer {
                Ok(Response::Claimed(c)) => self.confirm(c.epoch, &mut out),
                Ok(Response::Rejected(Rejection::StreamOwned { edge, .. })) => {
                    self.fence(format!("the stream was claimed on {edge}"), &mut out)
                }
                _ => self.retry(now, &mut out),
            },
            Input::Confirmed(answer) if self.step() == Some(&Step::Confirming) => match answer {
                Ok(owner) if self.ours(&owner.claim) => self.attach(owner, &mut out),
                _ => self.retry(now, &mut out),
            },
            Input::Attached(result) => {
                let State::Moving { since, lost, step: Step::Attaching(owner), old } = &mut self.state else {
                    return out;
                };
                let old = *old;
                match result {
                    Ok(()) => {
                        let took = now.saturating_duration_since(*since);
                        self.owner = owner.claim.owner;
                        self.state = State::Attached;
                        let replay: Vec<Frame> = self.retained.replay().cloned().collect();
                        let resent = replay.len();
                        out.push(Output::Replay(replay));
                        if old {
                            out.push(Output::ClosePrevious);
                        }
                        out.push(Output::WatchClaim(self.epoch));
                        out.push(Output::Moved { owner: self.owner, epoch: self.epoch, took, resent });
                    }
                    Err(why) => {
                        tracing::warn!(stream = %self.stream, owner = owner.claim.owner, why, "new owner unusable");
                        *lost = owner.claim.owner;
                        self.retry(now, &mut out);
                    }
                }
            }
            Input::Woke if self.step() == Some(&Step::Pausing) => {
                self.set_step(Step::Looking);
                out.push(Output::Lookup);
            }
            Input::Shutdown if self.is_moving() => {
                self.state = State::Ended;
                out.push(Output::Release(self.epoch));
            }
            Input::PublisherLeft if self.state != State::Ended => {
                if self.state == State::Attached || self.keeps_old() {
                    out.push(Output::Unpublish);
                    out.push(Output::CloseChannel);
                }
                self.state = State::Ended;
                out.push(Output::Release(self.epoch));
            }
            // An answer to a request this state no longer waits for, a wake-up that
            // came late, or an end already handled.
            Input::Looked(_)
            | Input::Reassigned(_)
            | Input::Claimed(_)
            | Input::Confirmed(_)
            | Input::Woke
            | Input::Shutdown
            | Input::PublisherLeft => {}
        }
        out
    }

    fn step(&self) -> Option<&Step> {
        match &self.state {
            State::Moving { step, .. } => Some(step),
            _ => None,
        }
    }

    fn set_step(&mut self, next: Step) {
        if let State::Moving { step, .. } = &mut self.state {
            *step = next;
        }
    }

    fn lost_owner(&self) -> NodeId {
        match &self.state {
            State::Moving { lost, .. } => *lost,
            _ => self.owner,
        }
    }

    /// A claim of this session on this edge.
    fn ours(&self, claim: &StreamClaim) -> bool {
        claim.edge == self.me && claim.session == self.session
    }

    fn start_moving(&mut self, now: Instant, out: &mut Vec<Output>) {
        out.push(Output::CloseChannel);
        self.pause.reset();
        self.state = State::Moving { since: now, lost: self.owner, step: Step::Looking, old: false };
        out.push(Output::Lookup);
    }

    /// Decides from who owns the stream now: ask the leader to move it off the lost
    /// owner, follow a move already made, wait for an origin that is behind, claim it
    /// again after a release, or give up to another session.
    fn looked(&mut self, answer: Result<Option<Owner>, String>, now: Instant, out: &mut Vec<Output>) {
        let lost = self.lost_owner();
        match answer {
            Ok(Some(o)) if self.ours(&o.claim) && o.claim.epoch == self.epoch && o.claim.owner == lost => {
                out.push(Output::Reassign { epoch: self.epoch, away_from: lost });
                self.set_step(Step::Reassigning(o));
            }
            Ok(Some(o)) if self.ours(&o.claim) => self.attach(o, out),
            // An origin behind us: ask again.
            Ok(Some(o)) if o.claim.epoch < self.epoch => self.retry(now, out),
            Ok(Some(o)) => self.fence(format!("held by {} (epoch {})", o.claim.edge, o.claim.epoch), out),
            // Released meanwhile (an owner gave up on it): claim it again.
            Ok(None) => {
                self.set_step(Step::Claiming);
                out.push(Output::Claim);
            }
            Err(e) => {
                tracing::debug!(stream = %self.stream, error = %e, "lookup failed");
                self.retry(now, out);
            }
        }
    }

    fn confirm(&mut self, epoch: u64, out: &mut Vec<Output>) {
        self.set_step(Step::Confirming);
        out.push(Output::LookupAtLeast(epoch));
    }

    fn attach(&mut self, owner: Owner, out: &mut Vec<Output>) {
        self.epoch = owner.claim.epoch;
        self.set_step(Step::Attaching(owner.clone()));
        out.push(Output::Attach(owner));
    }

    fn retry(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.set_step(Step::Pausing);
        out.push(Output::WakeAt(now + self.pause.next_pause()));
    }

    fn fence(&mut self, why: String, out: &mut Vec<Output>) {
        self.state = State::Ended;
        out.push(Output::Fenced(why));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::hls::stamper::{StamperConfig, DEFAULT_SEGMENT_MS};
    use crate::media::retain::RetainLimits;

    const ME: &str = "edge-1";
    const SESSION: &str = "s1";
    const WALL: u64 = 1_796_428_800_000;

    fn owner(node: NodeId, epoch: u64, edge: &str, session: &str) -> Owner {
        let claim = StreamClaim { owner: node, epoch, edge: edge.into(), session: session.into(), since_ms: 0 };
        Owner { claim, media: format!("127.0.0.1:{}", 9100 + node).parse().unwrap() }
    }

    fn ours(node: NodeId, epoch: u64) -> Owner {
        owner(node, epoch, ME, SESSION)
    }

    fn claimed(node: NodeId, epoch: u64) -> Response {
        Response::Claimed(ours(node, epoch).claim)
    }

    /// A 25 fps video stream: a keyframe every `gop` frames, each frame's payload its
    /// index (so a test can tell which frames arrived).
    fn frame(i: u32, gop: u32) -> Frame {
        let kind = if i.is_multiple_of(gop) { 0x17 } else { 0x27 };
        let mut payload = vec![kind, 0x01, 0, 0, 0];
        payload.extend_from_slice(&i.to_be_bytes());
        Frame::video(i * 40, Bytes::from(payload))
    }

    fn index(frame: &Frame) -> u32 {
        u32::from_be_bytes(frame.payload[5..9].try_into().unwrap())
    }

    /// A publication on origin 1 at epoch 10, with the default retain limits.
    fn publishing() -> Publishing {
        publishing_with(RetainLimits::default())
    }

    fn publishing_with(limits: RetainLimits) -> Publishing {
        let stamper = Stamper::new(StamperConfig::default(), None);
        Publishing::new(
            StreamKey::new("live", "p").unwrap(),
            ME.into(),
            SESSION.into(),
            10,
            1,
            Retained::new(limits),
            stamper,
        )
    }

    /// Feeds frames `range` (40 ms apart on the wall clock); returns the indexes sent live.
    fn feed(p: &mut Publishing, range: std::ops::Range<u32>) -> Vec<u32> {
        let mut sent = Vec::new();
        for i in range {
            if let Some(f) = p.frame(frame(i, 25), WALL + u64::from(i) * 40) {
                sent.push(index(&f));
            }
        }
        sent
    }

    fn replayed(out: &[Output]) -> Vec<u32> {
        out.iter()
            .find_map(|o| match o {
                Output::Replay(frames) => Some(frames.iter().map(index).collect()),
                _ => None,
            })
            .expect("a replay")
    }

    #[test]
    fn a_lost_owner_is_moved_away_from_and_every_frame_reaches_the_new_one() {
        let t0 = Instant::now();
        let mut p = publishing();
        assert_eq!(feed(&mut p, 0..60), (0..60).collect::<Vec<_>>());
        let lost_at = t0 + Duration::from_millis(2400);
        assert_eq!(p.handle(Input::OwnerLost("link down".into()), lost_at), vec![Output::CloseChannel, Output::Lookup]);
        // Frames keep coming while the move is under way; none is sent.
        assert!(feed(&mut p, 60..70).is_empty());
        let now = lost_at + Duration::from_millis(30);
        // Still on the lost owner at our epoch: ask the leader to move it.
        assert_eq!(
            p.handle(Input::Looked(Ok(Some(ours(1, 10)))), now),
            vec![Output::Reassign { epoch: 10, away_from: 1 }]
        );
        assert_eq!(p.handle(Input::Reassigned(Ok(claimed(2, 15))), now), vec![Output::LookupAtLeast(15)]);
        assert_eq!(p.handle(Input::Confirmed(Ok(ours(2, 15))), now), vec![Output::Attach(ours(2, 15))]);
        let out = p.handle(Input::Attached(Ok(())), lost_at + Duration::from_millis(90));
        // Re-sent from the newest keyframe at least 2 s old (frame 0: frame 25 is only
        // 1.4 s older than frame 59) through everything that arrived during the move;
        // receivers drop what they already have.
        assert_eq!(replayed(&out), (0..70).collect::<Vec<_>>());
        assert_eq!(out[1], Output::WatchClaim(15));
        assert_eq!(out[2], Output::Moved { owner: 2, epoch: 15, took: Duration::from_millis(90), resent: 70 });
        assert_eq!((p.owner(), p.epoch(), p.lost()), (2, 15, 0));
        assert_eq!(feed(&mut p, 70..72), vec![70, 71], "live again");
    }

    /// Loses the owner at `lost_at` and moves to another origin at a later epoch; the
    /// frames re-sent there.
    fn fail_over(p: &mut Publishing, lost_at: Instant) -> Vec<u32> {
        let (from, epoch) = (p.owner(), p.epoch());
        let (to, next) = (if from == 1 { 2 } else { 1 }, epoch + 5);
        p.handle(Input::OwnerLost("link down".into()), lost_at);
        // A "no" from the owner being left is not taken while moving.
        assert!(!p.retain_window(false));
        p.handle(Input::Looked(Ok(Some(ours(from, epoch)))), lost_at);
        p.handle(Input::Reassigned(Ok(claimed(to, next))), lost_at);
        p.handle(Input::Confirmed(Ok(ours(to, next))), lost_at);
        let replay = replayed(&p.handle(Input::Attached(Ok(())), lost_at));
        assert_eq!((p.owner(), p.epoch()), (to, next));
        replay
    }

    #[test]
    fn the_hls_window_goes_to_a_new_owner_only_while_the_owner_says_it_is_wanted() {
        let t0 = Instant::now();
        let limits = RetainLimits { window_segments: 3, ..RetainLimits::default() };
        // 20 s of a stream with 1 s GOPs; kept from the start.
        let mut wanted = publishing_with(limits);
        feed(&mut wanted, 0..500);
        let whole = fail_over(&mut wanted, t0);
        // Three complete segments and the open one, at least.
        let window_frames = (3 * DEFAULT_SEGMENT_MS / 40) as usize;
        assert!(whole.len() > window_frames, "{} frames re-sent with the window", whole.len());

        // Told it is not wanted: the usual history, back to a keyframe at least 2 s old.
        let mut unwanted = publishing_with(limits);
        assert!(unwanted.retain_window(false));
        assert!(!unwanted.retain_window(false), "nothing changes twice");
        feed(&mut unwanted, 0..500);
        let short = fail_over(&mut unwanted, t0);
        assert!(short.len() <= 3 * 25, "{} frames re-sent without the window", short.len());
        assert_eq!(short.last(), Some(&499));

        // Attached again, the new owner's "yes" keeps it from then on.
        assert!(unwanted.retain_window(true));
        feed(&mut unwanted, 500..1000);
        let refilled = fail_over(&mut unwanted, t0);
        assert!(refilled.len() > window_frames, "{} frames re-sent once wanted again", refilled.len());
    }

    #[test]
    fn a_move_the_leader_made_is_make_before_break_the_old_owner_takes_frames_until_the_new_one_has_them() {
        let t0 = Instant::now();
        let mut p = publishing();
        feed(&mut p, 0..10);
        // An older epoch on the feed changes nothing.
        assert!(p.handle(Input::ClaimMoved(9), t0).is_empty());
        // No channel closed: the new owner is asked for by the new epoch.
        assert_eq!(p.handle(Input::ClaimMoved(12), t0), vec![Output::LookupAtLeast(12)]);
        assert!(p.is_moving() && p.keeps_old());
        assert_eq!(feed(&mut p, 10..13), vec![10, 11, 12], "the old owner still gets every frame");
        assert_eq!(p.handle(Input::Confirmed(Ok(ours(3, 12))), t0), vec![Output::Attach(ours(3, 12))]);
        assert_eq!(feed(&mut p, 13..15), vec![13, 14], "and while the attach is under way");
        let out = p.handle(Input::Attached(Ok(())), t0 + Duration::from_millis(7));
        // The new owner gets everything from the keyframe, then the old one ends the
        // stream behind what it was sent.
        assert_eq!(replayed(&out), (0..15).collect::<Vec<_>>());
        assert_eq!(out[1], Output::ClosePrevious);
        assert_eq!(out[2], Output::WatchClaim(12));
        assert_eq!(out[3], Output::Moved { owner: 3, epoch: 12, took: Duration::from_millis(7), resent: 15 });
        assert_eq!((p.owner(), p.epoch(), p.lost()), (3, 12, 0));
        assert!(!p.keeps_old());
        assert_eq!(feed(&mut p, 15..17), vec![15, 16]);
    }

    #[test]
    fn an_old_owner_lost_mid_move_closes_its_channel_and_frames_wait_for_the_new_one() {
        let t0 = Instant::now();
        let mut p = publishing();
        feed(&mut p, 0..10);
        p.handle(Input::ClaimMoved(12), t0);
        feed(&mut p, 10..12);
        // The old owner's grace ran out (or it restarted): it refuses.
        assert_eq!(p.handle(Input::OwnerLost("refused: fenced".into()), t0), vec![Output::CloseChannel]);
        assert!(p.is_moving() && !p.keeps_old());
        assert!(feed(&mut p, 12..14).is_empty(), "kept, not sent");
        assert!(p.handle(Input::OwnerLost("again".into()), t0).is_empty(), "lost once");
        assert_eq!(p.handle(Input::Confirmed(Ok(ours(3, 12))), t0), vec![Output::Attach(ours(3, 12))]);
        let out = p.handle(Input::Attached(Ok(())), t0);
        assert_eq!(replayed(&out), (0..14).collect::<Vec<_>>());
        assert!(!out.contains(&Output::ClosePrevious), "closed already: {out:?}");
    }

    #[test]
    fn a_publisher_leaving_mid_move_ends_the_stream_on_the_old_owner_still_taking_frames() {
        let t0 = Instant::now();
        let mut p = publishing();
        p.handle(Input::ClaimMoved(12), t0);
        assert_eq!(
            p.handle(Input::PublisherLeft, t0),
            vec![Output::Unpublish, Output::CloseChannel, Output::Release(10)]
        );
        assert!(p.is_ended());
    }

    #[test]
    fn another_session_holding_the_stream_fences_the_publication_and_nothing_is_released() {
        let t0 = Instant::now();
        let mut p = publishing();
        p.handle(Input::OwnerLost("refused: fenced".into()), t0);
        let out = p.handle(Input::Looked(Ok(Some(owner(2, 14, "edge-2", "s9")))), t0);
        assert!(matches!(&out[..], [Output::Fenced(why)] if why.contains("edge-2")), "{out:?}");
        assert!(p.is_ended());
        assert!(p.handle(Input::PublisherLeft, t0).is_empty(), "a fenced session releases nothing");
        assert!(p.frame(frame(1, 25), WALL).is_none());
    }

    #[test]
    fn a_leader_change_mid_move_is_retried_with_a_growing_pause() {
        let t0 = Instant::now();
        let mut p = publishing();
        p.handle(Input::OwnerLost("link down".into()), t0);
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..7 {
            let out = p.handle(Input::Looked(Ok(Some(ours(1, 10)))), now);
            assert_eq!(out, vec![Output::Reassign { epoch: 10, away_from: 1 }]);
            // No leader: the reassign fails; the old owner is tried if its link is up
            // (it is not), then the stream is looked up again after a pause.
            let out = p.handle(Input::Reassigned(Err("the cluster did not answer".into())), now);
            assert_eq!(out, vec![Output::Reattach(ours(1, 10))]);
            let out = p.handle(Input::Attached(Err("no link to 127.0.0.1:9101".into())), now);
            let [Output::WakeAt(at)] = out[..] else { panic!("{out:?}") };
            pauses.push(at - now);
            // Early or stale inputs change nothing while pausing.
            assert!(p.handle(Input::Looked(Ok(None)), now).is_empty());
            now = at;
            assert_eq!(p.handle(Input::Woke, now), vec![Output::Lookup]);
        }
        let ms: Vec<u128> = pauses.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![20, 40, 80, 160, 320, 500, 500]);
        // The new leader moves it.
        p.handle(Input::Looked(Ok(Some(ours(1, 10)))), now);
        assert_eq!(p.handle(Input::Reassigned(Ok(claimed(3, 20))), now), vec![Output::LookupAtLeast(20)]);
        assert_eq!(p.handle(Input::Confirmed(Ok(ours(3, 20))), now), vec![Output::Attach(ours(3, 20))]);
        assert!(matches!(p.handle(Input::Attached(Ok(())), now)[..], [Output::Replay(_), _, _]));
        // A later loss starts with the first pause again.
        p.handle(Input::OwnerLost("link down".into()), now);
        let out = p.handle(Input::Looked(Err("no answer".into())), now);
        assert_eq!(out, vec![Output::WakeAt(now + Duration::from_millis(20))]);
    }

    #[test]
    fn a_stream_no_other_origin_can_take_goes_back_to_its_owner_once_its_link_is_up() {
        let t0 = Instant::now();
        let mut p = publishing();
        assert_eq!(feed(&mut p, 0..60).len(), 60);
        p.handle(Input::OwnerLost("link down: origin silent for 500ms".into()), t0);
        assert!(feed(&mut p, 60..65).is_empty());
        let nowhere = "no live origin other than 1 can take live/p; retry when one is back";
        // The link is still down: nothing to attach to, look again after a pause.
        assert_eq!(
            p.handle(Input::Looked(Ok(Some(ours(1, 10)))), t0),
            vec![Output::Reassign { epoch: 10, away_from: 1 }]
        );
        assert_eq!(p.handle(Input::Reassigned(Err(nowhere.into())), t0), vec![Output::Reattach(ours(1, 10))]);
        let out = p.handle(Input::Attached(Err("no link to 127.0.0.1:9101".into())), t0);
        let [Output::WakeAt(at)] = out[..] else { panic!("{out:?}") };
        assert_eq!(p.handle(Input::Woke, at), vec![Output::Lookup]);
        // The link is back: the same owner, the same epoch, every frame re-sent.
        p.handle(Input::Looked(Ok(Some(ours(1, 10)))), at);
        assert_eq!(p.handle(Input::Reassigned(Err(nowhere.into())), at), vec![Output::Reattach(ours(1, 10))]);
        let out = p.handle(Input::Attached(Ok(())), at);
        assert_eq!(replayed(&out), (0..65).collect::<Vec<_>>());
        assert_eq!((p.owner(), p.epoch(), p.lost()), (1, 10, 0));
        assert_eq!(feed(&mut p, 65..67), vec![65, 66], "live again");
    }

    #[test]
    fn an_origin_behind_is_asked_again_and_a_released_claim_is_claimed_again() {
        let t0 = Instant::now();
        let mut p = publishing();
        p.handle(Input::OwnerLost("link down".into()), t0);
        // An origin that has not applied our epoch yet.
        let out = p.handle(Input::Looked(Ok(Some(owner(2, 7, "edge-9", "old")))), t0);
        assert!(matches!(out[..], [Output::WakeAt(_)]), "{out:?}");
        assert_eq!(p.handle(Input::Woke, t0), vec![Output::Lookup]);
        // Released meanwhile (the owner gave up on it).
        assert_eq!(p.handle(Input::Looked(Ok(None)), t0), vec![Output::Claim]);
        assert_eq!(p.handle(Input::Claimed(Ok(claimed(2, 30))), t0), vec![Output::LookupAtLeast(30)]);
        assert_eq!(p.handle(Input::Confirmed(Ok(ours(2, 30))), t0), vec![Output::Attach(ours(2, 30))]);
        p.handle(Input::Attached(Ok(())), t0);
        assert_eq!((p.owner(), p.epoch()), (2, 30));
        // A claim lost to a rival while released fences.
        p.handle(Input::OwnerLost("link down".into()), t0);
        p.handle(Input::Looked(Ok(None)), t0);
        let rival = Response::Rejected(Rejection::StreamOwned { owner: 3, epoch: 31, edge: "edge-2".into() });
        assert!(matches!(&p.handle(Input::Claimed(Ok(rival)), t0)[..], [Output::Fenced(_)]));
    }

    #[test]
    fn a_new_owner_that_cannot_be_reached_is_moved_away_from_in_turn() {
        let t0 = Instant::now();
        let mut p = publishing();
        p.handle(Input::OwnerLost("link down".into()), t0);
        p.handle(Input::Looked(Ok(Some(ours(1, 10)))), t0);
        p.handle(Input::Reassigned(Ok(claimed(2, 15))), t0);
        p.handle(Input::Confirmed(Ok(ours(2, 15))), t0);
        let out = p.handle(Input::Attached(Err("no link to 127.0.0.1:9102".into())), t0);
        assert!(matches!(out[..], [Output::WakeAt(_)]));
        p.handle(Input::Woke, t0);
        // Ours on origin 2 at epoch 15: now origin 2 is the one to move away from.
        assert_eq!(
            p.handle(Input::Looked(Ok(Some(ours(2, 15)))), t0),
            vec![Output::Reassign { epoch: 15, away_from: 2 }]
        );
    }

    #[test]
    fn an_outage_longer_than_what_is_retained_loses_the_oldest_frames_and_resumes_at_a_keyframe() {
        let t0 = Instant::now();
        // Retains at most 2 s of stream time.
        let limits = RetainLimits { history_ms: 1_000, max_ms: 2_000, ..RetainLimits::default() };
        let mut p = publishing_with(limits);
        feed(&mut p, 0..50);
        p.handle(Input::OwnerLost("link down".into()), t0 + Duration::from_secs(2));
        // 6 s of frames while no owner can be found.
        feed(&mut p, 50..200);
        p.handle(Input::Looked(Ok(Some(ours(2, 12)))), t0 + Duration::from_secs(8));
        let out = p.handle(Input::Attached(Ok(())), t0 + Duration::from_secs(8));
        let replay = replayed(&out);
        assert_eq!(replay.first(), Some(&150), "resumes at a keyframe: {replay:?}");
        assert_eq!(replay.last(), Some(&199));
        assert!(p.lost() > 0, "what did not fit is counted lost");
    }

    #[test]
    fn the_end_unpublishes_only_on_a_live_owner_and_releases_once() {
        let t0 = Instant::now();
        let mut p = publishing();
        assert_eq!(
            p.handle(Input::PublisherLeft, t0),
            vec![Output::Unpublish, Output::CloseChannel, Output::Release(10)]
        );
        assert!(p.handle(Input::PublisherLeft, t0).is_empty());

        let mut p = publishing();
        p.handle(Input::OwnerLost("link down".into()), t0);
        assert_eq!(p.handle(Input::PublisherLeft, t0), vec![Output::Release(10)], "the channel is closed already");
        // A late answer to the lookup that was under way does nothing.
        assert!(p.handle(Input::Looked(Ok(Some(ours(2, 12)))), t0).is_empty());

        let mut p = publishing();
        assert!(p.handle(Input::Shutdown, t0).is_empty(), "a live publication ends with its connection");
        p.handle(Input::OwnerLost("link down".into()), t0);
        assert_eq!(p.handle(Input::Shutdown, t0), vec![Output::Release(10)]);
        assert!(p.is_ended());
    }
}
