//! `GET /vod/{id}/index.m3u8`, `/vod/{id}/init.mp4` and `/vod/{id}/{n}.m4s`: a VOD file
//! from the cache as HLS VOD (`docs/vod.md`, "Edges: HTTP").
//!
//! The file's index ([`VodIndex`]) is built once, on the blocking pool, the first time
//! any of its URLs is asked for, and kept for the [`MAX_INDEXES`] files asked for most
//! recently: a player asks for the playlist, the init segment and then every segment,
//! each of which needs it. A VOD id names the same bytes for as long as they are
//! cached (a recording's joined file is the same on every origin), so an index is
//! kept by id and length. Each request holds a long-request permit while the file is
//! fetched and its index built, as `/vod/{id}.flv` does; segments are read with
//! positional reads on the blocking pool.
//!
//! Tokens, as live HLS checks them, before the permit and the cache: when the app `vod`
//! requires play tokens, the playlist needs one ([`super::authorize_play`]) and lists
//! every URI with `?st=` and the file's segment token (the same for every viewer, so a
//! CDN can cache the media); `init.mp4` and segments need that `st` or a play token.
//! Refusals are counted as `hls`. Without the rule, the URIs carry the playlist's query,
//! whatever it is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::hls::{VodHlsError, VodIndex};
use super::{VodFile, VOD_APP};
use crate::edge::tokens::{self, Protocol, StreamAuthError};
use crate::edge::EdgeContext;
use crate::http_server::json_error as error;
use crate::vod::VodId;

/// Indexes kept in memory (each about 24 bytes per frame: ~6 MB for an hour).
pub(crate) const MAX_INDEXES: usize = 64;
/// How long players and caches may keep what these routes answer: a VOD file does not
/// change under its id.
const CACHE_CONTROL: &str = "public, max-age=3600";
/// The `Cache-Control` of a playlist that needed a play token: it must not be served to
/// a request without one (a shared cache may keep a `public` answer to a request with
/// `Authorization`), and the segment token it lists expires (the file's duration after
/// a live one's 10 to 20 minutes).
const TOKEN_PLAYLIST_CACHE_CONTROL: &str = "no-store";

/// The indexes of recently played VOD files.
#[derive(Default)]
pub(crate) struct Indexes {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    by_id: HashMap<VodId, (u64, Arc<VodIndex>, u64)>,
    /// Bumped at every use: the entry with the lowest goes first.
    clock: u64,
}

impl Indexes {
    fn get(&self, vod: &VodFile) -> Option<Arc<VodIndex>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.clock += 1;
        let now = kept.clock;
        let (len, index, used) = kept.by_id.get_mut(&vod.id)?;
        if *len != vod.len {
            return None;
        }
        *used = now;
        Some(index.clone())
    }

    fn keep(&self, vod: &VodFile, index: Arc<VodIndex>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.clock += 1;
        let now = kept.clock;
        if kept.by_id.len() >= MAX_INDEXES && !kept.by_id.contains_key(&vod.id) {
            if let Some(oldest) = kept.by_id.iter().min_by_key(|(_, (_, _, used))| *used).map(|(id, _)| id.clone()) {
                kept.by_id.remove(&oldest);
            }
        }
        kept.by_id.insert(vod.id.clone(), (vod.len, index, now));
    }
}

/// The index of `vod`: the one kept, or built on the blocking pool and kept. Shared
/// by HLS VOD and RTMP VOD.
pub(crate) async fn index(ctx: &EdgeContext, vod: &VodFile) -> Result<Arc<VodIndex>, VodHlsError> {
    if let Some(index) = ctx.vod_indexes.get(vod) {
        return Ok(index);
    }
    let target = Duration::from_millis(u64::from(ctx.config.hls.target_ms));
    let file = vod.file.clone();
    let len = vod.len;
    let index = tokio::task::spawn_blocking(move || VodIndex::build(&file, len, target))
        .await
        .map_err(|e| VodHlsError::Io(std::io::Error::other(e)))??;
    tracing::info!(
        vod.id = %vod.id, bytes = vod.len, segments = index.segments(), duration = ?index.duration(),
        "VOD file indexed"
    );
    let index = Arc::new(index);
    ctx.vod_indexes.keep(vod, index.clone());
    Ok(index)
}

/// What a URL under `/vod/{id}/` asks for.
#[derive(Debug, PartialEq)]
enum Asked {
    Playlist,
    Init,
    Segment(usize),
}

fn asked(file: &str) -> Option<Asked> {
    match file {
        "index.m3u8" => Some(Asked::Playlist),
        "init.mp4" => Some(Asked::Init),
        _ => {
            let n = file.strip_suffix(".m4s")?;
            // Digits only, one spelling per segment.
            if n.is_empty()
                || n.len() > 9
                || !n.bytes().all(|b| b.is_ascii_digit())
                || (n.len() > 1 && n.starts_with('0'))
            {
                return None;
            }
            n.parse().ok().map(Asked::Segment)
        }
    }
}

/// The route's handler.
pub(crate) async fn file(
    State(ctx): State<Arc<EdgeContext>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, file)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let id = match VodId::parse(&id) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let Some(asked) = asked(&file) else {
        return error(StatusCode::NOT_FOUND, "not_found", "HLS VOD serves index.m3u8, init.mp4 and {n}.m4s");
    };
    // Before the permit and the cache: a refused client holds nothing and fetches nothing.
    let uri_query = match authorize(&ctx, &id, &asked, &headers, query).await {
        Ok(uri_query) => uri_query,
        Err(e) => return tokens::refused(ctx.stats.auth_refused.count(Protocol::Hls, e)),
    };
    let (_permit, vod) = match super::flv::admit(&ctx, peer, &id).await {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let index = match index(&ctx, &vod).await {
        Ok(index) => index,
        Err(e) => return unplayable(&vod, &e),
    };
    let mut cache_control = CACHE_CONTROL;
    let (content_type, body) = match asked {
        Asked::Playlist => {
            let query = match uri_query {
                Some(UriQuery::AsAsked(query)) => query,
                Some(UriQuery::SegmentToken) => {
                    cache_control = TOKEN_PLAYLIST_CACHE_CONTROL;
                    // No signing key to make one: nothing (media then need a play token).
                    let lasting = ctx.tokens.segment_token_lasting(VOD_APP, &id.to_string(), index.duration()).await;
                    lasting.map(|st| format!("st={st}"))
                }
                None => None,
            };
            ("application/vnd.apple.mpegurl", index.playlist(query.as_deref()).into())
        }
        Asked::Init => ("video/mp4", index.init()),
        Asked::Segment(n) if n >= index.segments() => {
            return error(StatusCode::NOT_FOUND, "not_found", format!("{id} has {} segments", index.segments()))
        }
        Asked::Segment(n) => {
            let file = vod.file.clone();
            let read = index.clone();
            match tokio::task::spawn_blocking(move || read.segment(&file, n)).await {
                Ok(Ok(bytes)) => ("video/iso.segment", bytes),
                Ok(Err(e)) => return unplayable(&vod, &e),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache_control),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// What a playlist's URIs carry after them.
enum UriQuery {
    /// The app `vod` requires no token: the playlist request's own query, as it came.
    AsAsked(Option<String>),
    /// It requires play tokens: `st=` the file's segment token, made to last the file's
    /// duration (a VOD playlist is read once), once the file is indexed.
    SegmentToken,
}

/// Checks a request's tokens by the rules of the app `vod`, as live HLS does: the
/// playlist needs a play token (`Authorization: Bearer` or `?token=`); `init.mp4` and
/// segments a segment token (`?st=`, the one the playlist lists) or a play token. For a
/// playlist, what its URIs carry (`None` for the others).
async fn authorize(
    ctx: &EdgeContext,
    id: &VodId,
    asked: &Asked,
    headers: &HeaderMap,
    query: Option<String>,
) -> Result<Option<UriQuery>, StreamAuthError> {
    let token = tokens::from_request(headers, query.as_deref());
    match asked {
        Asked::Playlist => match super::authorize_play(ctx, token.as_deref(), id).await? {
            None => Ok(Some(UriQuery::AsAsked(query))),
            Some(_) => Ok(Some(UriQuery::SegmentToken)),
        },
        Asked::Init | Asked::Segment(_) => {
            let st = tokens::query_param(query.as_deref(), "st");
            ctx.tokens.authorize_segment(st.as_deref(), token.as_deref(), VOD_APP, &id.to_string()).await?;
            Ok(None)
        }
    }
}

/// A cached file HLS cannot be made of (not FLV, no H.264/HEVC/AV1/AAC/Opus track, a
/// segment too large): the client hears why; the file stays playable as `.flv`.
fn unplayable(vod: &VodFile, e: &VodHlsError) -> Response {
    tracing::info!(vod.id = %vod.id, error = %e, "a VOD file cannot be served as HLS");
    let status = match e {
        VodHlsError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, "unplayable", format!("{} cannot be served as HLS: {e}", vod.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_playlist_the_init_segment_and_numbered_segments_are_asked_for() {
        assert_eq!(asked("index.m3u8"), Some(Asked::Playlist));
        assert_eq!(asked("init.mp4"), Some(Asked::Init));
        assert_eq!(asked("0.m4s"), Some(Asked::Segment(0)));
        assert_eq!(asked("17.m4s"), Some(Asked::Segment(17)));
        for bad in ["", ".m4s", "01.m4s", "-1.m4s", "1.ts", "a.m4s", "1234567890.m4s", "../x", "index.m3u8x"] {
            assert_eq!(asked(bad), None, "{bad:?}");
        }
    }
}
