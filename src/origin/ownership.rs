//! Stream ownership, decided on the leader: claims (with the publish-key check and the
//! takeover of a dead session), placement of new streams (never on a draining origin
//! while another can take them), and reassignment of a stream whose owner is lost,
//! drained or moved by an operator (asked by the failover supervisor, an edge or the
//! admin API). Owner lookups and stream watches are answered by any origin from its own
//! applied state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftcast_raft::command::StreamClaim;
use raftcast_raft::typ::Raft;
use raftcast_raft::{Command, FailKind, ForwardReply, NodeId, Rejection, Request, RequestId, Response, StreamKey};
use raftcast_storage::StateHandle;

use super::commit::{failed, leadership_error, now_ms, Committer};
use super::live::LiveFacts;
use super::liveness::Liveness;
use super::load::{claims_per_origin, scores, stream_cost, LoadBoard};
use super::membership::node_addr;
use super::metrics::{Metrics, ReasonLabel};
use super::rebalance::{Candidate, REST};
use super::watch::StreamWatch;

/// A follower this many entries behind the leader is not given new streams (it is
/// probably catching up after a restart).
const LIVE_LAG: u64 = 64;

/// A claim younger than this counts as alive even before its publisher attached: the
/// edge is still between its claim and its `Publish`. The same holds for a stream
/// moved to a new owner this recently.
const TAKEOVER_YOUNG_CLAIM: Duration = Duration::from_secs(3);

/// When this leader last re-assigned each stream (see `holder_alive`).
type Moves = HashMap<StreamKey, Instant>;

/// Why a stream moved to another owner (the `reason` label of
/// `raftcast_streams_reassigned_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The leader could not reach the owner within the bound.
    Unreachable,
    /// An edge that cannot reach the owner asked (`Forward::Reassign`).
    Edge,
    /// An operator moved it (`Forward::Move`).
    Planned,
    /// Its owner is draining: the failover supervisor moved it away.
    Drain,
    /// Its owner stayed hot: the failover supervisor moved it to the least loaded open
    /// origin (`--rebalance`, see [`super::rebalance`]).
    Rebalance,
}

/// Where a moved stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The least loaded live voter other than this one (the owner is unreachable or
    /// draining), preferring those that are not draining.
    AwayFrom(NodeId),
    /// The least loaded live voter other than the current owner, preferring those that
    /// are not draining.
    Elsewhere,
    /// This origin, if it is a live voter and not draining.
    To(NodeId),
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::Edge => "edge",
            Reason::Planned => "planned",
            Reason::Drain => "drain",
            Reason::Rebalance => "rebalance",
        }
    }
}

/// A publisher's claim on a stream (`Forward::Claim`).
pub struct ClaimRequest<'a> {
    pub id: RequestId,
    pub stream: &'a StreamKey,
    pub edge: &'a str,
    pub session: &'a str,
    pub takeover: bool,
    pub key: Option<&'a str>,
}

/// Decides who owns which stream. Cheap to clone.
#[derive(Clone)]
pub struct Ownership {
    id: NodeId,
    raft: Raft,
    state: StateHandle,
    committer: Committer,
    /// Live stream facts, to tell a dead publishing session from a live one when a
    /// publisher asks to take a stream over.
    live: LiveFacts,
    /// Which origins answer the leader: placement gives streams only to those.
    liveness: Liveness,
    /// Answers `Forward::WatchStream`.
    watch: StreamWatch,
    /// Every origin's latest load report (polled while this node leads).
    board: LoadBoard,
    metrics: Arc<Metrics>,
    /// Streams this leader moved recently: a takeover must not take them (see
    /// `holder_alive`).
    moves: Arc<Mutex<Moves>>,
    /// Placements decided here whose claim or move has not committed yet: they count
    /// as load, so concurrent placements do not all pick the same origin.
    reserved: Reservations,
}

impl Ownership {
    // Each argument is a distinct collaborator wired once in `origin::run`; a parameter
    // struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        raft: Raft,
        state: StateHandle,
        committer: Committer,
        live: LiveFacts,
        liveness: Liveness,
        watch: StreamWatch,
        board: LoadBoard,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ownership {
            id,
            raft,
            state,
            committer,
            live,
            liveness,
            watch,
            board,
            metrics,
            moves: Arc::default(),
            reserved: Reservations::default(),
        }
    }

    /// `WatchStream` requests waiting on this origin now.
    pub fn stream_watches(&self) -> usize {
        self.watch.waiting()
    }

    /// The claim of `stream` and its owner's media address, from this node's state.
    pub fn lookup(&self, stream: &StreamKey) -> ForwardReply {
        let claim = self.state.read(|sm| sm.streams.get(stream).cloned());
        self.owner_reply(claim)
    }

    /// Waits (at most `wait_ms`, capped) until the claim of `stream` differs from
    /// `known_epoch`, then answers as [`Ownership::lookup`].
    pub async fn watch(&self, stream: &StreamKey, known_epoch: Option<u64>, wait_ms: u32) -> ForwardReply {
        let wait = Duration::from_millis(u64::from(wait_ms.min(raftcast_raft::command::MAX_WATCH_MS)));
        let claim = self.watch.wait(stream, known_epoch, wait).await;
        self.owner_reply(claim)
    }

    /// Claims a stream for a publisher, on the leader: checks the publish key, refuses
    /// a takeover of a live session, places the stream and commits the claim.
    pub async fn claim(&self, req: ClaimRequest<'_>) -> ForwardReply {
        let ClaimRequest { id, stream, edge, session, takeover, key } = req;
        // Leading and up to date, so the key check and the owner choice use current
        // state.
        if let Err(e) = self.raft.ensure_linearizable().await {
            return leadership_error(e);
        }
        if !self.state.read(|sm| sm.publish_allowed(stream, key)) {
            return ForwardReply::Written(Response::Rejected(Rejection::PublishDenied));
        }
        // A takeover replaces only a dead session: one whose owner has no publisher
        // attached under its epoch (an edge that died, a publisher that went away
        // without a release). A live one keeps the stream. A takeover stays on the dead
        // session's owner while it is live: that origin's hub holds the stream's last
        // HLS mark, which the new session's numbering continues after (docs/hls.md,
        // "Numbering").
        let mut keep = None;
        if takeover {
            let current = self.state.read(|sm| sm.streams.get(stream).cloned());
            if let Some(current) = current.filter(|c| c.edge != edge || c.session != session) {
                if self.holder_alive(stream, &current).await {
                    let rejection = Rejection::StreamOwned {
                        owner: current.owner,
                        epoch: current.epoch,
                        edge: current.edge.clone(),
                    };
                    return ForwardReply::Written(Response::Rejected(rejection));
                }
                tracing::info!(%stream, epoch = current.epoch, edge = current.edge, "taking over a dead session");
                // Even on a draining owner: it is the origin that remembers the HLS
                // numbering, and the drain then moves the stream with its new
                // publisher's marks (placing it elsewhere would make the numbers jump).
                keep = Some(current.owner).filter(|o| self.live_voters().1.contains(o));
            }
        }
        // This node is always live itself, so there is always an owner. A placement
        // stays reserved until its claim committed or failed (`_reserved` drops then);
        // a takeover kept on its owner is counted there already.
        let (owner, _reserved) = match keep {
            Some(owner) => (owner, None),
            None => match self.pick_owner(stream, None) {
                Some((owner, reservation)) => (owner, Some(reservation)),
                None => (self.id, None),
            },
        };
        let command = Command::ClaimStream {
            stream: stream.clone(),
            owner,
            edge: edge.to_string(),
            session: session.to_string(),
            takeover,
        };
        self.committer.commit(&Request { id, at_ms: 0, command }).await
    }

    /// Moves `stream` from its claim at `expected_epoch` to a live voter other than
    /// `away_from`, as [`raftcast_raft::Forward::Reassign`] describes; only on the
    /// leader (otherwise `NotLeader`), never forwarded. A request id that already
    /// applied gets its first answer without any check or proposal.
    pub async fn reassign(
        &self,
        id: RequestId,
        stream: &StreamKey,
        expected_epoch: u64,
        away_from: NodeId,
        reason: Reason,
    ) -> ForwardReply {
        self.move_claim(id, stream, expected_epoch, Target::AwayFrom(away_from), reason).await
    }

    /// Moves `stream` from its claim at `expected_epoch` to `target` (see
    /// [`Ownership::reassign`], whose checks and answers it shares).
    pub async fn move_claim(
        &self,
        id: RequestId,
        stream: &StreamKey,
        expected_epoch: u64,
        target: Target,
        reason: Reason,
    ) -> ForwardReply {
        // Leading and up to date, so the epoch check and the placement use current
        // state (and, on a retry, the first attempt's answer is applied if it was).
        if let Err(e) = self.raft.ensure_linearizable().await {
            return leadership_error(e);
        }
        let (answered, current) = self.state.read(|sm| (sm.answered(&id), sm.streams.get(stream).cloned()));
        if let Some(first) = answered {
            return ForwardReply::Written(first);
        }
        let current = match current {
            Some(claim) if claim.epoch == expected_epoch => claim,
            other => {
                return ForwardReply::Written(Response::Rejected(Rejection::StaleEpoch {
                    current: other.map(|c| c.epoch),
                }))
            }
        };
        let draining = self.state.read(|sm| sm.draining.clone());
        // Held until the move committed or failed (see `Reservations`).
        let (owner, _reserved) = match target {
            Target::To(origin) if origin == current.owner => return ForwardReply::Written(Response::Claimed(current)),
            Target::To(origin) if !self.live_voters().1.contains(&origin) => {
                return failed(
                    FailKind::Unavailable,
                    format!("origin {origin} is not a live voter; {stream} stays on origin {}", current.owner),
                )
            }
            Target::To(origin) if draining.contains(&origin) => {
                return failed(
                    FailKind::Conflict,
                    format!(
                        "origin {origin} is draining and takes no streams; {stream} stays on origin {} \
                         (undrain it first: ctl undrain {origin})",
                        current.owner
                    ),
                )
            }
            Target::To(origin) => (origin, self.reserved.reserve(origin)),
            Target::AwayFrom(_) | Target::Elsewhere => {
                let away_from = if let Target::AwayFrom(origin) = target { origin } else { current.owner };
                match self.pick_owner(stream, Some(away_from)) {
                    // A drain or an operator's move never puts a stream on a draining
                    // origin (placement falls back to those only when nothing else is
                    // live): the drain would move it on again, round and round.
                    Some((owner, _))
                        if matches!(reason, Reason::Drain | Reason::Planned) && draining.contains(&owner) =>
                    {
                        return failed(
                            FailKind::Unavailable,
                            format!(
                                "every live origin other than {away_from} is draining; {stream} stays on origin {}",
                                current.owner
                            ),
                        )
                    }
                    Some(picked) => picked,
                    None => {
                        return failed(
                            FailKind::Unavailable,
                            format!("no live origin other than {away_from} can take {stream}; retry when one is back"),
                        )
                    }
                }
            }
        };
        let command = Command::ReassignStream { stream: stream.clone(), expected_epoch, owner };
        let reply = self.committer.commit(&Request { id, at_ms: 0, command }).await;
        if let ForwardReply::Written(Response::Claimed(claim)) = &reply {
            self.note_moved(stream);
            self.metrics.streams_reassigned.get_or_create(&ReasonLabel { reason: reason.label() }).inc();
            tracing::info!(
                %stream, from = current.owner, to = claim.owner, epoch = claim.epoch, expected_epoch,
                reason = reason.label(), "stream re-assigned"
            );
        }
        reply
    }

    /// The answer to `Lookup` and `WatchStream`: the claim and its owner's media address.
    fn owner_reply(&self, claim: Option<StreamClaim>) -> ForwardReply {
        let media = claim.as_ref().and_then(|c| node_addr(&self.raft, c.owner)).map(|a| a.media);
        ForwardReply::Owner { claim, media }
    }

    /// Whether the session holding `claim` still publishes: its owner has a publisher
    /// attached under the claim's epoch, or the claim is too young to tell. An owner
    /// that does not answer cannot be receiving that publisher's media: dead.
    async fn holder_alive(&self, stream: &StreamKey, claim: &StreamClaim) -> bool {
        if now_ms().saturating_sub(claim.since_ms) < TAKEOVER_YOUNG_CLAIM.as_millis() as u64 {
            return true;
        }
        // A stream this leader moved moments ago is between owners: its publisher is
        // re-attaching, not gone. A new leader does not know what was moved before it,
        // so it treats every claim that way for its first moments.
        if self.recently_moved(stream) {
            return true;
        }
        let http = node_addr(&self.raft, claim.owner).map(|a| a.http);
        let facts = self.live.gather(BTreeMap::from([(claim.owner, http)])).await;
        match facts.get(&claim.owner) {
            Some(Some(streams)) => streams.get(stream).is_some_and(|s| s.epoch == Some(claim.epoch)),
            // The owner does not answer: its publisher may be alive and moving to a new
            // owner (the move comes within the owner-dead bound). Only an owner that
            // answers can say its publisher is gone.
            _ => true,
        }
    }

    /// Whether `stream` was re-assigned by this leader, or this node became leader,
    /// within [`TAKEOVER_YOUNG_CLAIM`].
    fn recently_moved(&self, stream: &StreamKey) -> bool {
        let now = Instant::now();
        let leading_since = self.liveness.observe(&self.raft.metrics().borrow(), now);
        if leading_since.is_none_or(|since| now.duration_since(since) < TAKEOVER_YOUNG_CLAIM) {
            return true;
        }
        self.moved_within(stream, TAKEOVER_YOUNG_CLAIM)
    }

    /// Whether this leader re-assigned `stream` within `within` (at most
    /// [`super::rebalance::REST`] or [`TAKEOVER_YOUNG_CLAIM`], which are remembered).
    fn moved_within(&self, stream: &StreamKey, within: Duration) -> bool {
        let moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves.get(stream).is_some_and(|at| at.elapsed() < within)
    }

    fn note_moved(&self, stream: &StreamKey) {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        moves.retain(|_, at| at.elapsed() < REST.max(TAKEOVER_YOUNG_CLAIM));
        moves.insert(stream.clone(), Instant::now());
    }

    /// The load scores of the live origins that take new streams ([`open_origins`]),
    /// counting placements in flight: what rebalancing compares.
    pub fn open_scores(&self) -> HashMap<NodeId, u64> {
        let (_, live) = self.live_voters();
        let in_flight = self.reserved.in_flight();
        let (claims, draining) = self.state.read(|sm| (claims_per_origin(sm.streams.values()), sm.draining.clone()));
        scores(&open_origins(&live, &draining), &claims, &self.board.fresh(Instant::now()), &in_flight)
    }

    /// The streams of `hot` that rebalancing may move, each with what it costs now
    /// (from `hot`'s own live facts): neither pinned to `hot` (pins win) nor moved by
    /// this leader within [`REST`]. Empty when `hot` does not answer: nothing is moved
    /// blind.
    pub async fn rebalance_candidates(&self, hot: NodeId) -> Vec<Candidate> {
        let http = node_addr(&self.raft, hot).map(|a| a.http);
        let facts = self.live.gather(BTreeMap::from([(hot, http)])).await;
        let Some(Some(facts)) = facts.get(&hot) else { return Vec::new() };
        let owned: Vec<(StreamKey, u64)> = self.state.read(|sm| {
            sm.streams
                .iter()
                .filter(|(key, claim)| claim.owner == hot && sm.pin_for(key).map(|(_, o)| o) != Some(hot))
                .map(|(key, claim)| (key.clone(), claim.epoch))
                .collect()
        });
        owned
            .into_iter()
            .filter(|(stream, _)| !self.moved_within(stream, REST))
            .map(|(stream, epoch)| {
                let cost_kbps = facts
                    .get(&stream)
                    .map_or(stream_cost(0.0, 0), |s| stream_cost(s.bitrate_kbps, s.subscribers.len()));
                Candidate { stream, epoch, cost_kbps }
            })
            .collect()
    }

    /// The voters that may own streams: this node, and followers that answered within
    /// `--owner-dead-after-ms` (see [`Liveness`]) and are at most [`LIVE_LAG`] entries
    /// behind. Draining ones included (see [`open_origins`]).
    pub fn live_voters(&self) -> (NodeId, Vec<NodeId>) {
        let m = self.raft.metrics().borrow().clone();
        let now = Instant::now();
        // Not leading (a race with losing leadership): nobody has been judged yet.
        let since = self.liveness.observe(&m, now).unwrap_or(now);
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.clone().unwrap_or_default();
        let live = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| {
                *v == m.id
                    || (self.liveness.reachable(*v, since, now)
                        && replication
                            .get(v)
                            .is_some_and(|matched| last.saturating_sub(matched.map_or(0, |l| l.index)) <= LIVE_LAG))
            })
            .collect();
        (m.id, live)
    }

    /// The origin that should own `stream`: the origin a pin rule names when it is a
    /// live voter that is not draining, otherwise (see [`place`]) the least loaded live
    /// voter that is not draining (any live voter when all of them drain); never
    /// `exclude`. `None` when no live voter but `exclude` exists. The load counts the
    /// placements still in flight on this leader, and the one made here is reserved
    /// until the returned [`Reservation`] drops.
    fn pick_owner(&self, stream: &StreamKey, exclude: Option<NodeId>) -> Option<(NodeId, Reservation)> {
        let (me, mut live) = self.live_voters();
        live.retain(|v| Some(*v) != exclude);
        if live.is_empty() {
            return None;
        }
        let mut pin = None;
        let (placement, reservation) = self.reserved.decide(|in_flight| {
            // Read under the reservations' lock: a placement that commits meanwhile is
            // then counted twice for a moment (in the state and in flight), never not
            // at all.
            let (claims, pinned, draining) = self.state.read(|sm| {
                let pin = sm.pin_for(stream).map(|(scope, origin)| (scope.clone(), origin));
                (claims_per_origin(sm.streams.values()), pin, sm.draining.clone())
            });
            let load = scores(&live, &claims, &self.board.fresh(Instant::now()), in_flight);
            let placement = place(stream, me, &live, &draining, &load, pinned.as_ref().map(|(_, origin)| *origin));
            pin = pinned;
            (placement.owner(), placement)
        });
        let rule = || pin.as_ref().map(|(scope, _)| scope.to_string()).unwrap_or_default();
        let owner = match placement {
            Placement::Pinned(owner) => {
                tracing::debug!(%stream, owner, pin = %rule(), "placed by a pin rule");
                owner
            }
            Placement::PinnedDraining { owner, pinned } => {
                tracing::info!(%stream, pin = %rule(), pinned, owner, "the pinned origin is draining; placed by load");
                owner
            }
            Placement::ByLoad { owner, pinned_not_live: Some(pinned) } if Some(pinned) == exclude => {
                tracing::info!(%stream, pin = %rule(), pinned, owner, "moving a pinned stream off its origin");
                owner
            }
            Placement::ByLoad { owner, pinned_not_live: Some(pinned) } => {
                tracing::warn!(
                    %stream, pin = %rule(), pinned, owner, ?live,
                    "the pinned origin is not a live voter; placing the stream by load instead"
                );
                owner
            }
            Placement::ByLoad { owner, pinned_not_live: None } => owner,
        };
        Some((owner, reservation))
    }
}

/// Streams placed on each origin by this leader whose claim or move has not committed
/// yet. Placement reads the load from the applied state, where a placement shows only
/// once committed; without these, concurrent placements (the failover supervisor moves
/// up to [`super::failover::REASSIGNS_IN_FLIGHT`] streams at once) would all read the
/// same load and pick the same origin. Soft state of the leader: a new leader starts
/// with none, and every count is bounded by the placements awaiting their commit.
#[derive(Clone, Default)]
pub struct Reservations(Arc<Mutex<HashMap<NodeId, usize>>>);

/// One placement in flight on `owner`; released when dropped, that is when its command
/// committed (the state counts it from then on) or failed.
#[must_use = "a reservation counts only while it is held"]
pub struct Reservation {
    owner: NodeId,
    board: Reservations,
}

impl Reservations {
    /// Decides a placement with the counts in flight and reserves the origin chosen,
    /// both under one lock, so no two decisions see the same counts. `decide` gets the
    /// placements in flight per origin and returns the chosen origin and anything else.
    pub fn decide<T>(&self, decide: impl FnOnce(&HashMap<NodeId, usize>) -> (NodeId, T)) -> (T, Reservation) {
        let mut in_flight = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (owner, out) = decide(&in_flight);
        *in_flight.entry(owner).or_default() += 1;
        (out, Reservation { owner, board: self.clone() })
    }

    /// Reserves a placement on `owner` chosen without a decision (an operator's move to
    /// a named origin).
    pub fn reserve(&self, owner: NodeId) -> Reservation {
        self.decide(|_| (owner, ())).1
    }

    /// The placements in flight per origin.
    pub fn in_flight(&self) -> HashMap<NodeId, usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut in_flight = self.board.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_flight.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.owner);
            }
        }
    }
}

/// Where a new stream goes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A pin rule names this live voter.
    Pinned(NodeId),
    /// The least loaded live voter; `pinned_not_live` is the origin a pin rule named
    /// but which is not a live voter (down, lagging, a learner or removed).
    ByLoad { owner: NodeId, pinned_not_live: Option<NodeId> },
    /// A pin rule names `pinned`, a live voter that is draining while others are not:
    /// the pin yields and the stream goes to the least loaded of those.
    PinnedDraining { owner: NodeId, pinned: NodeId },
}

impl Placement {
    /// The origin chosen.
    pub fn owner(self) -> NodeId {
        match self {
            Placement::Pinned(owner) | Placement::ByLoad { owner, .. } | Placement::PinnedDraining { owner, .. } => {
                owner
            }
        }
    }
}

/// The live origins that may take new streams: those not draining, or every live one
/// when all of them drain (a drain never makes a publish fail).
pub fn open_origins(live: &[NodeId], draining: &BTreeSet<NodeId>) -> Vec<NodeId> {
    let open: Vec<NodeId> = live.iter().copied().filter(|n| !draining.contains(n)).collect();
    if open.is_empty() {
        live.to_vec()
    } else {
        open
    }
}

/// Chooses the owner of a new stream among the [`open_origins`]: the pinned origin if
/// it is one, otherwise the one with the lowest `load` (a score from
/// [`super::load::scores`]), ties spread by a hash of the stream key (so equal loads do
/// not all land on the same origin); `me` when nothing is live.
pub fn place(
    stream: &StreamKey,
    me: NodeId,
    live: &[NodeId],
    draining: &BTreeSet<NodeId>,
    load: &HashMap<NodeId, u64>,
    pinned: Option<NodeId>,
) -> Placement {
    let open = open_origins(live, draining);
    if let Some(pinned) = pinned.filter(|p| open.contains(p)) {
        return Placement::Pinned(pinned);
    }
    let spread = |node: NodeId| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (stream, node).hash(&mut h);
        h.finish()
    };
    let owner = open.iter().copied().min_by_key(|n| (load.get(n).copied().unwrap_or(0), spread(*n))).unwrap_or(me);
    match pinned {
        Some(pinned) if live.contains(&pinned) => Placement::PinnedDraining { owner, pinned },
        _ => Placement::ByLoad { owner, pinned_not_live: pinned },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> StreamKey {
        StreamKey::new("live", name).unwrap()
    }

    fn none() -> BTreeSet<NodeId> {
        BTreeSet::new()
    }

    #[test]
    fn a_live_pinned_origin_wins_over_load() {
        let load = HashMap::from([(1, 0), (2, 0), (3, 9)]);
        assert_eq!(place(&key("a"), 1, &[1, 2, 3], &none(), &load, Some(3)), Placement::Pinned(3));
    }

    #[test]
    fn a_pinned_origin_that_is_not_live_falls_back_to_the_least_loaded() {
        let load = HashMap::from([(1, 4), (2, 1), (3, 0)]);
        // Origin 3 is pinned but not live (down, lagging or only a learner).
        assert_eq!(
            place(&key("a"), 1, &[1, 2], &none(), &load, Some(3)),
            Placement::ByLoad { owner: 2, pinned_not_live: Some(3) }
        );
        assert_eq!(
            place(&key("a"), 1, &[1, 2], &none(), &load, None),
            Placement::ByLoad { owner: 2, pinned_not_live: None }
        );
    }

    #[test]
    fn without_pins_streams_spread_by_load() {
        let mut load = HashMap::new();
        for i in 0..30 {
            let Placement::ByLoad { owner, .. } = place(&key(&format!("s{i}")), 1, &[1, 2, 3], &none(), &load, None)
            else {
                panic!()
            };
            *load.entry(owner).or_default() += 1;
        }
        assert_eq!(load, HashMap::from([(1, 10), (2, 10), (3, 10)]));
        // With nothing live, this node takes it.
        assert_eq!(
            place(&key("x"), 7, &[], &none(), &load, None),
            Placement::ByLoad { owner: 7, pinned_not_live: None }
        );
    }

    #[test]
    fn a_draining_origin_gets_no_stream_while_another_is_open() {
        // Origin 3 drains and owns nothing: the least loaded by far, yet never chosen.
        let draining = BTreeSet::from([3]);
        let mut load = HashMap::from([(1, 5), (2, 5), (3, 0)]);
        for i in 0..50 {
            let Placement::ByLoad { owner, pinned_not_live: None } =
                place(&key(&format!("s{i}")), 3, &[1, 2, 3], &draining, &load, None)
            else {
                panic!("s{i}")
            };
            assert_ne!(owner, 3, "s{i}");
            *load.entry(owner).or_default() += 1;
        }
        assert_eq!(load[&1] + load[&2], 60);
        assert_eq!(load[&1], load[&2], "still spread by load among the others");
        // Two of three drain: the one left takes everything.
        let two = BTreeSet::from([1, 3]);
        assert_eq!(
            place(&key("a"), 1, &[1, 2, 3], &two, &load, None),
            Placement::ByLoad { owner: 2, pinned_not_live: None }
        );
        // A pin to a draining origin yields to load while another is open.
        let load = HashMap::from([(1, 0), (2, 4), (3, 0)]);
        assert_eq!(
            place(&key("a"), 2, &[1, 2, 3], &draining, &load, Some(3)),
            Placement::PinnedDraining { owner: 1, pinned: 3 }
        );
        // A pin to an open origin still wins.
        assert_eq!(place(&key("a"), 1, &[1, 2, 3], &draining, &load, Some(2)), Placement::Pinned(2));
    }

    #[test]
    fn when_every_live_origin_drains_streams_are_still_placed_among_them() {
        let all = BTreeSet::from([1, 2, 3]);
        let load = HashMap::from([(1, 4), (2, 1), (3, 0)]);
        // Origin 3 is down; 1 and 2 drain: the publish is placed anyway, by load.
        assert_eq!(open_origins(&[1, 2], &all), vec![1, 2]);
        assert_eq!(
            place(&key("a"), 1, &[1, 2], &all, &load, None),
            Placement::ByLoad { owner: 2, pinned_not_live: None }
        );
        // And the pin holds among them.
        assert_eq!(place(&key("a"), 1, &[1, 2], &all, &load, Some(1)), Placement::Pinned(1));
        // Draining ids that are not live change nothing.
        assert_eq!(open_origins(&[1, 2], &BTreeSet::from([3, 9])), vec![1, 2]);
        assert_eq!(open_origins(&[1, 2], &BTreeSet::from([1])), vec![2]);
    }

    /// What `pick_owner` does with the applied state's claims per origin and no load
    /// report: [`place`] by the [`scores`] of `live`.
    fn place_counting(
        stream: &StreamKey,
        me: NodeId,
        live: &[NodeId],
        draining: &BTreeSet<NodeId>,
        claims: HashMap<NodeId, usize>,
        in_flight: &HashMap<NodeId, usize>,
        pinned: Option<NodeId>,
    ) -> Placement {
        place(stream, me, live, draining, &scores(live, &claims, &HashMap::new(), in_flight), pinned)
    }

    #[test]
    fn an_origin_with_a_few_heavy_streams_gets_fewer_new_ones_than_one_with_many_idle_ones() {
        use crate::origin::load::LoadReport;
        // Origin 1: 4 streams at 5 Mbit/s, one of them watched through two edges.
        // Origin 2: 40 idle streams (claimed, no media yet). Origin 3 drains.
        let heavy = [(5000.0, 2), (5000.0, 0), (5000.0, 0), (5000.0, 0)];
        let reports = HashMap::from([
            (1, LoadReport::new(1, heavy, 0.1)),
            (2, LoadReport::new(2, vec![(0.0, 0); 40], 0.1)),
            (3, LoadReport::new(3, [], 0.0)),
        ]);
        let mut claims = HashMap::from([(1, 4), (2, 40), (3, 0)]);
        let draining = BTreeSet::from([3]);
        let live = [1, 2, 3];
        let mut got = HashMap::<NodeId, usize>::new();
        for i in 0..40 {
            let load = scores(&live, &claims, &reports, &HashMap::new());
            let owner = place(&key(&format!("new-{i}")), 1, &live, &draining, &load, None).owner();
            // Committed, not yet in the next report: counted as an average stream.
            *claims.get_mut(&owner).unwrap() += 1;
            *got.entry(owner).or_default() += 1;
        }
        assert_eq!(got.get(&3), None, "a draining origin gets nothing, however idle");
        let (on_1, on_2) = (got.get(&1).copied().unwrap_or(0), got.get(&2).copied().unwrap_or(0));
        eprintln!("40 new streams: {on_1} on the heavy origin, {on_2} on the idle one");
        // By count, origin 1 (4 streams) would have taken all 40.
        assert!(on_1 < on_2, "heavy origin got {on_1}, idle one {on_2}");
        // A pin to the heavy origin still wins.
        let load = scores(&live, &claims, &reports, &HashMap::new());
        assert_eq!(place(&key("vip"), 1, &live, &draining, &load, Some(1)), Placement::Pinned(1));
    }

    /// Places `n` streams at once, each holding its reservation (none has committed),
    /// from threads that all decide before any releases; returns the owners chosen.
    fn concurrent_placements(reserved: &Reservations, load: &HashMap<NodeId, usize>, n: usize) -> Vec<NodeId> {
        let decided = std::sync::Barrier::new(n);
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..n)
                .map(|i| {
                    let decided = &decided;
                    scope.spawn(move || {
                        let stream = key(&format!("moved-{i}"));
                        let (owner, held) = reserved.decide(|in_flight| {
                            let p = place_counting(&stream, 2, &[2, 3], &none(), load.clone(), in_flight, None);
                            (p.owner(), p.owner())
                        });
                        // Nothing commits until every placement is decided.
                        decided.wait();
                        drop(held);
                        owner
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        })
    }

    #[test]
    fn concurrent_placements_spread_by_the_load_in_flight() {
        // Origin 1 died with 10 streams; the survivors own 10 and 9. Ten moves decided
        // at once, before any commits: without reservations all ten would read
        // {2: 10, 3: 9} and land on origin 3 (19 against 10).
        let load = HashMap::from([(1, 10), (2, 10), (3, 9)]);
        let reserved = Reservations::default();
        let owners = concurrent_placements(&reserved, &load, 10);
        let on = |o: NodeId| owners.iter().filter(|x| **x == o).count();
        assert_eq!(on(2) + on(3), 10, "{owners:?}");
        assert!(on(3) == 5 || on(3) == 6, "{owners:?}");
        assert!(reserved.in_flight().is_empty(), "every reservation is released once dropped");
    }

    #[test]
    fn a_reservation_counts_until_dropped_and_a_named_target_counts_too() {
        let reserved = Reservations::default();
        let load = HashMap::from([(2, 3), (3, 3)]);
        let pick = |name: &str| {
            reserved.decide(|in_flight| {
                let p = place_counting(&key(name), 2, &[2, 3], &none(), load.clone(), in_flight, None);
                (p.owner(), p.owner())
            })
        };
        let (first, held) = pick("a");
        let other = if first == 2 { 3 } else { 2 };
        // While the first is in flight, the next goes to the other origin whatever the
        // hash says; once it is dropped (say, the claim failed), the counts are even.
        let (second, held_2) = pick("b");
        assert_eq!(second, other);
        assert_eq!(reserved.in_flight(), HashMap::from([(2, 1), (3, 1)]));
        drop((held, held_2));
        assert!(reserved.in_flight().is_empty());
        // An operator's move to origin 3 is in flight: the next placement goes to 2.
        let _to_3 = reserved.reserve(3);
        assert_eq!(pick("c").0, 2);
        // A pin still wins over the load in flight.
        let pinned = place_counting(&key("d"), 2, &[2, 3], &none(), load.clone(), &reserved.in_flight(), Some(3));
        assert_eq!(pinned, Placement::Pinned(3));
    }
}
