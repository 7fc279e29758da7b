//! Reading recordings: a piece file served to a peer ([`piece_route`]), and a whole
//! recording as one FLV stream ([`recording_stream`]) built from local piece files or
//! peers' copies, joined by [`super::join::Joiner`].
//!
//! A piece still being written is read as far as its writer got (its last, torn tag
//! is left out), so a recording can be read while it grows.

use std::pin::Pin;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use raftcast_raft::recording::Piece;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::files;
use super::flv_file::{FlvError, TagReader};
use super::join::Joiner;
use super::replica;
use super::Recorder;

/// Bytes read from a local piece file at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks of a joined recording queued for the HTTP response: the reader of the pieces
/// waits for a slow client.
const BODY_QUEUE: usize = 16;

/// Why a recording could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No origin holding the piece could give it.
    #[error("piece {epoch} is unavailable: {why}")]
    Unavailable { epoch: u64, why: String },
    /// A piece's bytes are not FLV.
    #[error("piece {epoch}: {source}")]
    Corrupt { epoch: u64, source: FlvError },
    /// Reading a local file failed.
    #[error("piece {epoch}: {source}")]
    Io { epoch: u64, source: std::io::Error },
}

type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, ReadError>> + Send>>;

/// The local file of the piece of `epoch`: complete, or being written here.
async fn local_file(recorder: &Recorder, epoch: u64) -> Option<tokio::fs::File> {
    let dir = recorder.dir();
    match tokio::fs::File::open(files::piece_path(dir, epoch)).await {
        Ok(file) => Some(file),
        Err(_) => tokio::fs::File::open(files::part_path(dir, epoch)).await.ok(),
    }
}

fn file_chunks(file: tokio::fs::File, epoch: u64) -> Chunks {
    Box::pin(futures::stream::unfold(Some(file), move |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(source) => Some((Err(ReadError::Io { epoch, source }), None)),
        }
    }))
}

/// The bytes of `piece`: from this origin's disk, or else from the first holder (or
/// its owner, for a piece being written) that answers.
async fn piece_chunks(recorder: &Recorder, piece: &Piece) -> Result<Chunks, ReadError> {
    let epoch = piece.epoch;
    if let Some(file) = local_file(recorder, epoch).await {
        return Ok(file_chunks(file, epoch));
    }
    let mut why = String::from("no other origin holds it");
    let sources = piece.holders.iter().copied().chain(std::iter::once(piece.owner));
    for origin in sources.filter(|o| *o != recorder.id()) {
        let Some(http) = recorder.http_of(origin) else { continue };
        let url = recorder.peers().url(&http, &replica::piece_path(epoch));
        match recorder.peers().get(url).send().await {
            Ok(res) if res.status().is_success() => {
                let chunks = res.bytes_stream().map(move |chunk| {
                    chunk.map_err(|e| ReadError::Unavailable { epoch, why: format!("origin {origin}: {e}") })
                });
                return Ok(Box::pin(chunks));
            }
            Ok(res) => why = format!("origin {origin} answered {}", res.status()),
            Err(e) => why = format!("origin {origin}: {e}"),
        }
    }
    Err(ReadError::Unavailable { epoch, why })
}

/// A recording made of `pieces` (in epoch order) as one FLV stream, each frame once.
/// An error ends the stream early (the HTTP response is then cut, never completed).
pub fn recording_stream(recorder: Recorder, pieces: Vec<Piece>) -> mpsc::Receiver<Result<Bytes, ReadError>> {
    let (tx, rx) = mpsc::channel(BODY_QUEUE);
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        if tx.send(Ok(Joiner::header())).await.is_err() {
            return;
        }
        let mut joiner = Joiner::new();
        for piece in &pieces {
            if let Err(e) = join_piece(&recorder, piece, &mut joiner, &tx).await {
                tracing::info!(epoch = piece.epoch, error = %e, "a recording could not be read whole");
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let (frames, duplicates) = joiner.counts();
        tracing::debug!(frames, duplicates, pieces = pieces.len(), "recording read");
    }));
    rx
}

async fn join_piece(
    recorder: &Recorder,
    piece: &Piece,
    joiner: &mut Joiner,
    tx: &mpsc::Sender<Result<Bytes, ReadError>>,
) -> Result<(), ReadError> {
    let epoch = piece.epoch;
    let mut chunks = piece_chunks(recorder, piece).await?;
    let mut reader = TagReader::new();
    while let Some(chunk) = chunks.next().await {
        reader.push(&chunk?);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    if let Some(tag) = joiner.push(frame) {
                        if tx.send(Ok(tag)).await.is_err() {
                            return Ok(()); // the client left
                        }
                    }
                }
                Ok(None) => break,
                Err(source) => return Err(ReadError::Corrupt { epoch, source }),
            }
        }
    }
    Ok(())
}

/// [`replica::PIECE_ROUTE`]: a piece file this origin holds (complete, or as far as it
/// is written), for origins presenting the cluster secret. 404 when it is not here.
pub async fn piece_route(State(recorder): State<Recorder>, headers: HeaderMap, Path(epoch): Path<String>) -> Response {
    if !recorder.peers().secret().admits(&headers) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response();
    }
    let Some(epoch) = epoch.parse::<u64>().ok().filter(|_| epoch.bytes().all(|b| b.is_ascii_digit())) else {
        return (StatusCode::BAD_REQUEST, "a piece is named by its epoch").into_response();
    };
    match local_file(&recorder, epoch).await {
        Some(file) => {
            let body = Body::from_stream(file_chunks(file, epoch));
            ([(header::CONTENT_TYPE, "video/x-flv")], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such piece here").into_response(),
    }
}
