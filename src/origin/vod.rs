//! The peer route edges fetch VOD files from (`docs/vod.md`, "Origins"):
//! `GET /internal/vod/{id}`, behind the cluster secret. A recording is the joined FLV
//! of its pieces ([`recording_stream`], the admin route's bytes), once every piece is
//! finished; a media-library file is `{name}.flv` in `--media-dir`, streamed from disk.
//!
//! The id is parsed by [`VodId::parse`] before anything else: a library name can only
//! be `[A-Za-z0-9_-]`, so no request names a path outside the library. Never decides
//! what an edge keeps; it only answers what this origin can give.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use raftcast_raft::recording::Piece;
use raftcast_raft::StateMachine;
use raftcast_storage::StateHandle;
use tokio::io::AsyncReadExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::ReaderStream;

use super::recording::read::recording_stream;
use super::recording::Recorder;
use crate::http_server::json_error;
use crate::vod::VodId;

/// The route, for the origin's router.
pub(crate) const VOD_ROUTE: &str = "/internal/vod/{id}";

/// Bytes read from a library file at a time.
const CHUNK: usize = 64 * 1024;

/// What the route needs: the catalog, the recorder that reads pieces, the library.
#[derive(Clone)]
pub(crate) struct VodServer {
    state: StateHandle,
    recorder: Recorder,
    media_dir: Option<Arc<std::path::Path>>,
}

impl VodServer {
    pub(crate) fn new(state: StateHandle, recorder: Recorder, media_dir: Option<PathBuf>) -> VodServer {
        VodServer { state, recorder, media_dir: media_dir.map(Arc::from) }
    }
}

/// Why a recording cannot be served (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// The catalog (as applied here) does not list it.
    Unknown,
    /// A piece is still being written, or its publishing session still holds the
    /// stream: the file would grow.
    Unfinished,
}

/// The pieces of recording `id` if it is complete, from this origin's applied state.
/// A recording is complete when every piece is finished and its publishing session no
/// longer holds the stream's claim (between a failover's old and new piece every piece
/// can be finished for a moment while the session goes on).
fn finished_pieces(sm: &StateMachine, id: u64) -> Result<Vec<Piece>, Refusal> {
    let recording = sm.recordings.catalog.get(&id).ok_or(Refusal::Unknown)?;
    if recording.pieces.iter().any(|p| p.finished.is_none()) {
        return Err(Refusal::Unfinished);
    }
    let live = sm
        .streams
        .get(&recording.stream)
        .is_some_and(|claim| claim.edge == recording.edge && claim.session == recording.session);
    if live {
        return Err(Refusal::Unfinished);
    }
    Ok(recording.pieces.clone())
}

/// [`VOD_ROUTE`]: 400 for a malformed id; a recording: 404 `unknown`, 409
/// `unfinished`, else 200 with the joined FLV (chunked; cut off, never completed, when a
/// piece cannot be read); a library file: 404 without it, else 200 with its length.
pub(crate) async fn route(State(server): State<VodServer>, Path(id): Path<String>) -> Response {
    let id = match VodId::parse(&id) {
        Ok(id) => id,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    match id {
        VodId::Recording(id) => match server.state.read(|sm| finished_pieces(sm, id)) {
            Ok(pieces) => {
                let chunks = recording_stream(server.recorder.clone(), pieces);
                ([(header::CONTENT_TYPE, "video/x-flv")], Body::from_stream(ReceiverStream::new(chunks)))
                    .into_response()
            }
            Err(Refusal::Unknown) => json_error(StatusCode::NOT_FOUND, "unknown", format!("no recording {id}")),
            Err(Refusal::Unfinished) => json_error(
                StatusCode::CONFLICT,
                "unfinished",
                format!("recording {id} is still being written; it plays as VOD once it is finished"),
            ),
        },
        VodId::Library(name) => library_file(server.media_dir.as_deref(), &name).await,
    }
}

/// `{dir}/{name}.flv` with its length, streamed from disk in [`CHUNK`]s (tokio's file
/// reads run on the blocking pool). No more than the length announced is sent: a file
/// that grows meanwhile is cut there, one that shrinks ends the body short, which the
/// edge sees as a cut body.
async fn library_file(dir: Option<&std::path::Path>, name: &str) -> Response {
    let not_found = || json_error(StatusCode::NOT_FOUND, "unknown", format!("no library file {name:?} here"));
    let Some(dir) = dir else { return not_found() };
    let path = dir.join(format!("{name}.flv"));
    let Ok(file) = tokio::fs::File::open(&path).await else { return not_found() };
    let len = match file.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return not_found(),
    };
    let body = ReaderStream::with_capacity(file.take(len), CHUNK).inspect_err(move |e| {
        tracing::warn!(path = %path.display(), error = %e, "a library file could not be read");
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "video/x-flv")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use raftcast_raft::command::StreamClaim;
    use raftcast_raft::recording::{PieceFacts, Recording};
    use raftcast_raft::StreamKey;

    use super::*;

    fn piece(epoch: u64, finished: bool) -> Piece {
        let facts = PieceFacts { bytes: 10, frames: 1, first_ts: 0, last_ts: 0, dropped: 0, closed_ms: 1 };
        Piece { epoch, owner: 1, opened_ms: 0, holders: BTreeSet::new(), finished: finished.then_some(facts) }
    }

    fn machine(pieces: Vec<Piece>) -> StateMachine {
        let mut sm = StateMachine::default();
        let stream = StreamKey::new("live", "x").unwrap();
        let recording = Recording { stream, edge: "edge-1".into(), session: "s1".into(), started_ms: 0, pieces };
        sm.recordings.catalog.insert(7, recording);
        sm
    }

    #[test]
    fn a_recording_is_served_once_every_piece_is_finished_and_its_session_over() {
        let sm = machine(vec![piece(3, true), piece(5, true)]);
        assert_eq!(finished_pieces(&sm, 7).unwrap().len(), 2);
        assert_eq!(finished_pieces(&sm, 8), Err(Refusal::Unknown));
        let sm = machine(vec![piece(3, true), piece(5, false)]);
        assert_eq!(finished_pieces(&sm, 7), Err(Refusal::Unfinished));
        // Between a failover's pieces: all finished, the session still publishing.
        let mut sm = machine(vec![piece(3, true)]);
        let claim = |session: &str| StreamClaim {
            owner: 2,
            epoch: 9,
            edge: "edge-1".into(),
            session: session.into(),
            since_ms: 0,
        };
        sm.streams.insert(StreamKey::new("live", "x").unwrap(), claim("s1"));
        assert_eq!(finished_pieces(&sm, 7), Err(Refusal::Unfinished));
        // A new session of the same stream is another recording.
        sm.streams.insert(StreamKey::new("live", "x").unwrap(), claim("s2"));
        assert!(finished_pieces(&sm, 7).is_ok());
    }
}
