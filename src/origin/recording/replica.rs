//! Copies of finished pieces: every finished piece is held by [`super::COPIES`] origins,
//! its owner and one replica, so losing one origin's disk loses no recording.
//!
//! Which origin copies a piece is decided from the replicated catalog and membership
//! alone ([`assigned`]), so exactly one origin takes it up without coordination: the
//! first voter after the owner (by id, wrapping) that does not hold it. It fetches the
//! piece from a holder over the peer HTTP route ([`PIECE_ROUTE`], cluster secret),
//! checks its length against the catalog, syncs it, and records itself as a holder.

use futures::StreamExt;
use raftcast_raft::recording::Piece;
use raftcast_raft::{Command, NodeId};
use tokio::io::AsyncWriteExt;

use super::{files, lock, Recorder, COPIES};

/// The peer route on which an origin serves a piece file it holds (cluster secret):
/// `/internal/recordings/{epoch}`.
pub const PIECE_ROUTE: &str = "/internal/recordings/{epoch}";

/// The URL path of the piece of `epoch` on [`PIECE_ROUTE`].
pub fn piece_path(epoch: u64) -> String {
    format!("/internal/recordings/{epoch}")
}

/// The origin that should copy `piece` now, if it needs a copy: the first voter after
/// its owner (by id, wrapping around) that does not hold it.
pub fn assigned(piece: &Piece, voters: &[NodeId]) -> Option<NodeId> {
    piece.finished?;
    if piece.holders.len() >= COPIES || piece.holders.is_empty() {
        return None;
    }
    let mut candidates: Vec<NodeId> = voters.iter().copied().filter(|v| !piece.holders.contains(v)).collect();
    candidates.sort_unstable();
    candidates.iter().copied().find(|v| *v > piece.owner).or_else(|| candidates.first().copied())
}

/// Starts copying `piece` of `recording` here unless a copy is under way.
pub fn start(recorder: &Recorder, recording: u64, piece: Piece) {
    if !lock(&recorder.inner.copying).insert(piece.epoch) {
        return;
    }
    let recorder = recorder.clone();
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let epoch = piece.epoch;
        match copy(&recorder, &piece).await {
            Ok(bytes) => {
                recorder.inner.stats.copies.inc();
                recorder.inner.stats.bytes_copied.inc_by(bytes);
                tracing::info!(epoch, bytes, "copied a recording piece");
                let holder = recorder.inner.id;
                recorder.propose(Command::AddPieceHolder { recording, epoch, holder }).await;
            }
            Err(e) => tracing::debug!(epoch, error = %e, "copying a recording piece failed; retried later"),
        }
        lock(&recorder.inner.copying).remove(&epoch);
    }));
}

/// Why a copy failed (it is tried again at the next pass).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// No holder answered with the piece.
    #[error("no holder of the piece could be reached ({0})")]
    Unreachable(String),
    /// The bytes fetched are not what the catalog says the piece holds.
    #[error("fetched {got} bytes, the catalog says {want}")]
    WrongLength { got: u64, want: u64 },
    /// Writing the copy failed.
    #[error(transparent)]
    File(#[from] files::FileError),
}

/// Fetches `piece` from a holder into `{epoch}.flv.copy`, then moves it into place.
async fn copy(recorder: &Recorder, piece: &Piece) -> Result<u64, CopyError> {
    let want = piece.finished.map_or(0, |f| f.bytes);
    let dir = recorder.dir().to_owned();
    let mut last = String::from("no holder");
    for holder in piece.holders.iter().copied().filter(|h| *h != recorder.id()) {
        let Some(http) = recorder.http_of(holder) else { continue };
        let url = recorder.peers().url(&http, &piece_path(piece.epoch));
        let res = match recorder.peers().get(url).send().await {
            Ok(res) if res.status().is_success() => res,
            Ok(res) => {
                last = format!("origin {holder} answered {}", res.status());
                continue;
            }
            Err(e) => {
                last = format!("origin {holder}: {e}");
                continue;
            }
        };
        let path = files::copy_path(&dir, piece.epoch);
        tokio::fs::create_dir_all(&dir).await.map_err(|source| files::FileError::Io {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let mut out = tokio::fs::File::create(&path).await.map_err(|source| files::FileError::Io {
            what: "creating",
            path: path.clone(),
            source,
        })?;
        let mut body = res.bytes_stream();
        let mut got = 0u64;
        let mut broken = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    broken = Some(format!("origin {holder}: {e}"));
                    break;
                }
            };
            got += chunk.len() as u64;
            if got > want {
                break;
            }
            out.write_all(&chunk).await.map_err(|source| files::FileError::Io {
                what: "writing",
                path: path.clone(),
                source,
            })?;
        }
        out.flush().await.map_err(|source| files::FileError::Io { what: "writing", path: path.clone(), source })?;
        drop(out);
        if let Some(broken) = broken {
            last = broken;
            continue;
        }
        if got != want {
            return Err(CopyError::WrongLength { got, want });
        }
        let frames = piece.finished.map_or(0, |f| f.frames);
        copy_marks(recorder, holder, &http, piece.epoch, frames).await;
        let epoch = piece.epoch;
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || files::commit_copy(&dir, epoch))
            .await
            .map_err(|e| CopyError::Unreachable(e.to_string()))??;
        return Ok(got);
    }
    Err(CopyError::Unreachable(last))
}

/// How long fetching a piece's marks may take, body included (an hour of marks is
/// about 15 MB).
const MARKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Fetches the marks of the piece of `epoch` (`frames` tags) from `holder` into
/// `{epoch}.marks.copy`, which [`files::commit_copy`] then moves into place with the
/// piece. Best effort: a holder without marks (an older build, a piece recorded
/// before them) or a failed fetch leaves the replica without marks (its segments are
/// not listed for live rewind here), never fails the copy.
async fn copy_marks(recorder: &Recorder, holder: NodeId, http: &str, epoch: u64, frames: u64) {
    let dir = recorder.dir().to_owned();
    let path = files::marks_copy_path(&dir, epoch);
    let url = recorder.peers().url(http, &super::dvr::marks_path(epoch));
    let most = frames.saturating_mul(super::marks::RECORD as u64);
    let fetched: Result<(), String> = async {
        let res = recorder.peers().get(url).timeout(MARKS_TIMEOUT).send().await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("answered {}", res.status()));
        }
        let mut out = tokio::fs::File::create(&path).await.map_err(|e| e.to_string())?;
        let mut body = res.bytes_stream();
        let mut got = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            got += chunk.len() as u64;
            if got > most {
                return Err(format!("more than {frames} records"));
            }
            out.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        out.flush().await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(why) = fetched {
        tracing::debug!(epoch, holder, why, "a replica is made without its piece's marks");
        let _ = tokio::fs::remove_file(&path).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftcast_raft::recording::PieceFacts;
    use std::collections::BTreeSet;

    fn piece(owner: NodeId, holders: &[NodeId], finished: bool) -> Piece {
        let facts = PieceFacts { bytes: 1, frames: 1, first_ts: 0, last_ts: 0, dropped: 0, closed_ms: 0 };
        Piece {
            epoch: 9,
            owner,
            opened_ms: 0,
            holders: holders.iter().copied().collect::<BTreeSet<_>>(),
            finished: finished.then_some(facts),
        }
    }

    #[test]
    fn the_next_voter_after_the_owner_copies_a_finished_piece_once() {
        let voters = [1, 2, 3];
        assert_eq!(assigned(&piece(1, &[1], true), &voters), Some(2));
        assert_eq!(assigned(&piece(2, &[2], true), &voters), Some(3));
        assert_eq!(assigned(&piece(3, &[3], true), &voters), Some(1), "wrapping around");
        assert_eq!(assigned(&piece(1, &[1, 2], true), &voters), None, "two copies are enough");
        assert_eq!(assigned(&piece(1, &[], false), &voters), None, "not finished");
        assert_eq!(assigned(&piece(1, &[], true), &voters), None, "nobody to copy from");
        // The owner was removed from the voters; its copy is still a source.
        assert_eq!(assigned(&piece(4, &[4], true), &voters), Some(1));
    }
}
