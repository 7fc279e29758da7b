//! Recordings as the cluster replicates them: which streams are recorded (rules per app
//! and per stream) and the catalog of recordings, each a list of pieces — one per
//! owner epoch — with the origins holding a copy of each.
//!
//! Pure data and its pure updates, applied by [`crate::state::StateMachine`]: no clock
//! (times come stamped in the request), no I/O, no file names (an origin names a piece
//! file by its epoch alone).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{KeyScope, Rejection, Response, StreamKey};
use crate::NodeId;

/// Most recording rules (apps and streams) the cluster holds.
pub const MAX_RECORD_RULES: usize = 1024;
/// Most recordings in the catalog; the next one is refused until some are deleted.
pub const MAX_RECORDINGS: usize = 10_000;
/// Most pieces one recording has (one per owner change of its publishing session).
pub const MAX_PIECES: usize = 256;
/// Most origins holding a copy of one piece.
pub const MAX_HOLDERS: usize = 8;
/// Longest edge or session name a piece may carry (claims carry theirs from the edge).
pub const MAX_SESSION_LEN: usize = 256;

/// One recording: what one publishing session of a stream sent while it was recorded,
/// across every owner it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recording {
    pub stream: StreamKey,
    /// The publishing session (the claim's edge and session) it records.
    pub edge: String,
    pub session: String,
    /// Leader time its first piece was opened, Unix ms.
    pub started_ms: u64,
    /// Its pieces, ordered by epoch (the order the owners had the stream in).
    pub pieces: Vec<Piece>,
}

/// The part of a recording one owner wrote under one claim epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    /// The claim epoch it was written under: unique in the cluster, its file's name.
    pub epoch: u64,
    /// The origin that wrote it.
    pub owner: NodeId,
    /// Leader time it was opened, Unix ms.
    pub opened_ms: u64,
    /// Origins holding a complete copy (the owner once it finished it, then replicas).
    pub holders: BTreeSet<NodeId>,
    /// What it holds, once finished; `None` while it is being written (or its owner
    /// died and has not come back to finish it).
    pub finished: Option<PieceFacts>,
}

/// What a finished piece holds, as its writer counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceFacts {
    /// Bytes of the FLV file.
    pub bytes: u64,
    /// Frames (FLV tags) in it.
    pub frames: u64,
    /// Publisher timestamps of its first and last frame, ms.
    pub first_ts: u32,
    pub last_ts: u32,
    /// Frames the writer lost because it fell behind (its queue skipped to a keyframe).
    pub dropped: u64,
    /// Leader time it was finished, Unix ms (stamped when the finish applies).
    pub closed_ms: u64,
}

/// The recording rules and the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recordings {
    /// Per app or stream: record or not. A stream's rule beats its app's.
    pub rules: BTreeMap<KeyScope, bool>,
    /// Recordings by id (the log index of the entry that opened the first piece).
    pub catalog: BTreeMap<u64, Recording>,
    /// How long and how much finished recordings are kept (the leader deletes the
    /// oldest beyond either bound).
    pub retention: Retention,
}

/// Bounds on finished recordings; `None`: no bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// A recording whose last piece finished longer ago than this (ms) is deleted.
    pub max_age_ms: Option<u64>,
    /// Finished recordings together hold at most this many bytes (one copy counted);
    /// the oldest are deleted first.
    pub max_bytes: Option<u64>,
}

/// Most recordings [`Recordings::expired`] names at once (the leader deletes them in
/// rounds).
pub const MAX_EXPIRED: usize = 64;

fn limit(what: String) -> Response {
    Response::Rejected(Rejection::LimitExceeded { what })
}

impl Recordings {
    /// Whether `stream` is recorded: its own rule, else its app's, else not.
    pub fn wanted(&self, stream: &StreamKey) -> bool {
        self.rules
            .get(&KeyScope::Stream(stream.clone()))
            .or_else(|| self.rules.get(&KeyScope::App(stream.app.clone())))
            .copied()
            .unwrap_or(false)
    }

    /// Sets (`Some`) or removes (`None`) the rule of `scope`.
    pub fn set_rule(&mut self, scope: &KeyScope, record: Option<bool>) -> Response {
        match record {
            Some(record) => {
                if !self.rules.contains_key(scope) && self.rules.len() >= MAX_RECORD_RULES {
                    return limit(format!("the cluster holds the most recording rules it may ({MAX_RECORD_RULES})"));
                }
                self.rules.insert(scope.clone(), record);
                Response::Stored
            }
            None => match self.rules.remove(scope) {
                Some(_) => Response::Stored,
                None => Response::Rejected(Rejection::NotFound),
            },
        }
    }

    /// The recording and position of the piece written under `epoch`, if any.
    pub fn piece(&self, epoch: u64) -> Option<(u64, &Piece)> {
        self.catalog.iter().find_map(|(id, r)| Some((*id, r.pieces.iter().find(|p| p.epoch == epoch)?)))
    }

    /// Opens the piece `owner` writes of `stream` under `epoch`, in the latest recording
    /// of the same publishing session (or a new one, whose id is `index`). Opening a
    /// piece that exists answers its recording and changes nothing.
    pub fn open_piece(&mut self, index: u64, at_ms: u64, open: OpenPiece<'_>) -> Response {
        let OpenPiece { stream, epoch, owner, edge, session } = open;
        if edge.len() > MAX_SESSION_LEN || session.len() > MAX_SESSION_LEN {
            return limit(format!("edge and session names are at most {MAX_SESSION_LEN} bytes"));
        }
        if let Some((id, _)) = self.piece(epoch) {
            return Response::Recording { id };
        }
        let piece = Piece { epoch, owner, opened_ms: at_ms, holders: BTreeSet::new(), finished: None };
        let same_session = |r: &&mut Recording| r.stream == *stream && r.edge == edge && r.session == session;
        if let Some((id, recording)) = self.catalog.iter_mut().rev().find(|(_, r)| same_session(r)) {
            if recording.pieces.len() >= MAX_PIECES {
                return limit(format!("recording {id} has the most pieces one may ({MAX_PIECES})"));
            }
            let at = recording.pieces.partition_point(|p| p.epoch < epoch);
            recording.pieces.insert(at, piece);
            return Response::Recording { id: *id };
        }
        if self.catalog.len() >= MAX_RECORDINGS {
            return limit(format!("the catalog holds the most recordings it may ({MAX_RECORDINGS}); delete some"));
        }
        let recording = Recording {
            stream: stream.clone(),
            edge: edge.to_owned(),
            session: session.to_owned(),
            started_ms: at_ms,
            pieces: vec![piece],
        };
        self.catalog.insert(index, recording);
        Response::Recording { id: index }
    }

    /// Marks the piece finished with `facts` (its owner holds it from now on); a piece
    /// finished already keeps its first facts.
    pub fn finish_piece(&mut self, recording: u64, epoch: u64, facts: PieceFacts, at_ms: u64) -> Response {
        let Some(piece) = self.piece_mut(recording, epoch) else { return Response::Rejected(Rejection::NotFound) };
        if piece.finished.is_none() {
            piece.finished = Some(PieceFacts { closed_ms: at_ms, ..facts });
            piece.holders.insert(piece.owner);
        }
        Response::Stored
    }

    /// Records that `holder` has a complete copy of a finished piece.
    pub fn add_holder(&mut self, recording: u64, epoch: u64, holder: NodeId) -> Response {
        let Some(piece) = self.piece_mut(recording, epoch) else { return Response::Rejected(Rejection::NotFound) };
        if piece.finished.is_none() {
            return Response::Rejected(Rejection::NotFound);
        }
        if !piece.holders.contains(&holder) && piece.holders.len() >= MAX_HOLDERS {
            return limit(format!("a piece is held by at most {MAX_HOLDERS} origins"));
        }
        piece.holders.insert(holder);
        Response::Stored
    }

    /// Removes a recording from the catalog (origins then delete their piece files).
    pub fn delete(&mut self, recording: u64) -> Response {
        match self.catalog.remove(&recording) {
            Some(_) => Response::Stored,
            None => Response::Rejected(Rejection::NotFound),
        }
    }

    /// The recordings retention wants deleted at `now_ms` (leader time), oldest first,
    /// at most [`MAX_EXPIRED`]: finished ones (every piece finished) that ended longer
    /// than `max_age_ms` ago, then the oldest finished ones while all finished ones hold
    /// more than `max_bytes`. A recording still being written is never named.
    pub fn expired(&self, now_ms: u64) -> Vec<u64> {
        let finished: Vec<(u64, u64, u64)> = self
            .catalog
            .iter()
            .filter_map(|(id, r)| {
                let facts: Option<Vec<PieceFacts>> = r.pieces.iter().map(|p| p.finished).collect();
                let facts = facts?;
                let ended = facts.iter().map(|f| f.closed_ms).max().unwrap_or(r.started_ms);
                Some((*id, ended, facts.iter().map(|f| f.bytes).sum()))
            })
            .collect();
        let mut out = Vec::new();
        let mut total: u64 = finished.iter().map(|(_, _, b)| b).sum();
        for (id, ended, bytes) in &finished {
            let too_old = self.retention.max_age_ms.is_some_and(|age| now_ms.saturating_sub(*ended) > age);
            let too_much = self.retention.max_bytes.is_some_and(|max| total > max);
            if too_old || too_much {
                out.push(*id);
                total -= bytes;
                if out.len() == MAX_EXPIRED {
                    break;
                }
            }
        }
        out
    }

    fn piece_mut(&mut self, recording: u64, epoch: u64) -> Option<&mut Piece> {
        self.catalog.get_mut(&recording)?.pieces.iter_mut().find(|p| p.epoch == epoch)
    }
}

/// The arguments of [`Recordings::open_piece`].
#[derive(Debug, Clone, Copy)]
pub struct OpenPiece<'a> {
    pub stream: &'a StreamKey,
    pub epoch: u64,
    pub owner: NodeId,
    pub edge: &'a str,
    pub session: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamKey {
        StreamKey::new("live", "cam").unwrap()
    }

    fn open<'a>(stream: &'a StreamKey, epoch: u64, owner: NodeId, session: &'a str) -> OpenPiece<'a> {
        OpenPiece { stream, epoch, owner, edge: "edge-1", session }
    }

    fn facts() -> PieceFacts {
        PieceFacts { bytes: 10, frames: 2, first_ts: 0, last_ts: 40, dropped: 0, closed_ms: 0 }
    }

    #[test]
    fn a_stream_rule_beats_its_apps() {
        let mut r = Recordings::default();
        let s = stream();
        assert!(!r.wanted(&s));
        r.set_rule(&KeyScope::App("live".into()), Some(true));
        assert!(r.wanted(&s));
        r.set_rule(&KeyScope::Stream(s.clone()), Some(false));
        assert!(!r.wanted(&s));
        assert!(r.wanted(&StreamKey::new("live", "other").unwrap()));
        assert_eq!(r.set_rule(&KeyScope::Stream(s.clone()), None), Response::Stored);
        assert!(r.wanted(&s));
        assert_eq!(r.set_rule(&KeyScope::Stream(s), None), Response::Rejected(Rejection::NotFound));
    }

    #[test]
    fn pieces_of_one_session_join_one_recording_and_a_new_session_starts_another() {
        let mut r = Recordings::default();
        let s = stream();
        assert_eq!(r.open_piece(5, 100, open(&s, 5, 1, "a")), Response::Recording { id: 5 });
        // The owner changed: epoch 9 on origin 2, same session.
        assert_eq!(r.open_piece(9, 200, open(&s, 9, 2, "a")), Response::Recording { id: 5 });
        // A repeat (an owner restarted and opens again) changes nothing.
        assert_eq!(r.open_piece(12, 300, open(&s, 9, 2, "a")), Response::Recording { id: 5 });
        assert_eq!(r.catalog[&5].pieces.iter().map(|p| (p.epoch, p.owner)).collect::<Vec<_>>(), [(5, 1), (9, 2)]);
        // Another session of the stream is another recording.
        assert_eq!(r.open_piece(20, 400, open(&s, 20, 2, "b")), Response::Recording { id: 20 });
        assert_eq!(r.catalog.len(), 2);
        assert_eq!(r.piece(9).map(|(id, p)| (id, p.owner)), Some((5, 2)));
    }

    #[test]
    fn finishing_makes_the_owner_a_holder_and_replicas_are_added_once_finished() {
        let mut r = Recordings::default();
        let s = stream();
        r.open_piece(5, 100, open(&s, 5, 1, "a"));
        assert_eq!(r.add_holder(5, 5, 2), Response::Rejected(Rejection::NotFound), "not finished yet");
        assert_eq!(r.finish_piece(5, 5, facts(), 900), Response::Stored);
        let piece = &r.catalog[&5].pieces[0];
        assert_eq!(piece.holders, BTreeSet::from([1]));
        assert_eq!(piece.finished.map(|f| f.closed_ms), Some(900));
        // A second finish keeps the first facts.
        let other = PieceFacts { bytes: 99, ..facts() };
        assert_eq!(r.finish_piece(5, 5, other, 1_000), Response::Stored);
        assert_eq!(r.catalog[&5].pieces[0].finished.map(|f| f.bytes), Some(10));
        assert_eq!(r.add_holder(5, 5, 2), Response::Stored);
        assert_eq!(r.catalog[&5].pieces[0].holders, BTreeSet::from([1, 2]));
        assert_eq!(r.finish_piece(5, 6, facts(), 0), Response::Rejected(Rejection::NotFound));
        assert_eq!(r.delete(5), Response::Stored);
        assert_eq!(r.delete(5), Response::Rejected(Rejection::NotFound));
    }

    #[test]
    fn retention_names_the_oldest_finished_recordings_beyond_age_or_bytes() {
        let mut r = Recordings::default();
        let s = stream();
        // Three finished recordings of 10 bytes, ending at 1_000, 2_000 and 3_000; one
        // still being written.
        for (i, session) in ["a", "b", "c", "d"].iter().enumerate() {
            let epoch = 1 + i as u64;
            r.open_piece(epoch, 0, open(&s, epoch, 1, session));
            if *session != "d" {
                r.finish_piece(epoch, epoch, facts(), 1_000 * epoch);
            }
        }
        assert!(r.expired(1_000_000).is_empty(), "no bound, nothing expires");
        r.retention = Retention { max_age_ms: Some(1_500), max_bytes: None };
        assert_eq!(r.expired(3_600), vec![1, 2], "ended more than 1.5 s before");
        r.retention = Retention { max_age_ms: None, max_bytes: Some(15) };
        assert_eq!(r.expired(0), vec![1, 2], "30 bytes down to 10");
        r.retention = Retention { max_age_ms: Some(0), max_bytes: None };
        assert_eq!(r.expired(10_000), vec![1, 2, 3], "never the one being written");
    }

    #[test]
    fn the_catalog_and_the_rules_are_bounded() {
        let mut r = Recordings::default();
        for i in 0..MAX_RECORD_RULES {
            assert_eq!(r.set_rule(&KeyScope::App(format!("a{i}")), Some(true)), Response::Stored);
        }
        assert!(matches!(
            r.set_rule(&KeyScope::App("one-more".into()), Some(true)),
            Response::Rejected(Rejection::LimitExceeded { .. })
        ));
        assert_eq!(r.set_rule(&KeyScope::App("a0".into()), Some(false)), Response::Stored, "replacing is fine");
        let s = stream();
        for i in 0..MAX_PIECES as u64 {
            r.open_piece(1 + i, 0, open(&s, 1 + i, 1, "a"));
        }
        assert!(matches!(
            r.open_piece(10_000, 0, open(&s, 10_000, 1, "a")),
            Response::Rejected(Rejection::LimitExceeded { .. })
        ));
        let long = "x".repeat(MAX_SESSION_LEN + 1);
        assert!(matches!(
            r.open_piece(20_000, 0, open(&s, 20_000, 1, &long)),
            Response::Rejected(Rejection::LimitExceeded { .. })
        ));
        r.finish_piece(1, 1, facts(), 0);
        for holder in 2..=MAX_HOLDERS as u64 {
            assert_eq!(r.add_holder(1, 1, holder), Response::Stored);
        }
        assert!(matches!(r.add_holder(1, 1, 100), Response::Rejected(Rejection::LimitExceeded { .. })));
    }
}
