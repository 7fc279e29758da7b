//! VOD on the edge (`docs/vod.md`): recordings and media-library files, fetched whole
//! from the origins into a bounded on-disk cache and served from it as HTTP-FLV and as
//! HLS VOD.
//!
//! - `cache`: the cache ([`VodCache`]): single-flight fetches, LRU eviction to a byte
//!   bound, the index rebuilt from the directory at start; [`VodFile`] to read from;
//! - `origins`: where misses come from, the origins' `GET /internal/vod/{id}`;
//! - `range`: the `Range` header, sans-IO;
//! - `flv`: `GET /vod/{id}.flv` and its errors as HTTP answers;
//! - `hls`: the index of one file's tags, cut into segments at keyframes, and its
//!   playlist, init segment and segments (fMP4, as the live packager writes them), no
//!   sockets;
//! - `hls_http`: `GET /vod/{id}/index.m3u8`, `init.mp4` and `{n}.m4s`, with the
//!   indexes of recently played files kept in memory;
//! - `player`: which frames of a file an RTMP play sends and when (start position,
//!   pacing, `seek`, `pause`, the end), sans-IO;
//! - `rtmp`: one RTMP play (`rtmp://EDGE/vod/{id}`), the player driven with the clock
//!   and the file.
//!
//! Plays follow the token rules of the app [`VOD_APP`] (`ctl apps vod ...`), the VOD id
//! as the stream name: [`authorize_play`] over HTTP; an RTMP play goes through the
//! connection's admission of every play (`rtmp_conn::admit_play`) with that app and
//! name, the same rule.
//!
//! Never knows live streams: a VOD file is a finished file.

pub(crate) mod cache;
pub(crate) mod flv;
pub(crate) mod hls;
pub(crate) mod hls_http;
pub(crate) mod origins;
pub(crate) mod player;
pub(crate) mod range;
pub(crate) mod rtmp;

pub(crate) use cache::{VodCache, VodError, VodFile};

use raftcast_raft::token::{StreamClaims, StreamRight};

use crate::edge::tokens::StreamAuthError;
use crate::edge::EdgeContext;
use crate::vod::VodId;

/// The app whose token rules VOD plays follow, a VOD id (`42`, `lib-intro`) being the
/// stream name: an operator protects VOD with `ctl apps vod --play-token on` and signs
/// play tokens for `--app vod --name 42`, as for a live app. The edges' HTTP routes
/// put `/vod/` before `/{app}/`, so no live app `vod` can be played over HTTP anyway.
pub(crate) const VOD_APP: &str = "vod";

/// `id` from `cache`, or [`VodError::Off`] on an edge without one.
pub(crate) async fn open(cache: Option<&VodCache>, id: &VodId) -> Result<VodFile, VodError> {
    match cache {
        Some(cache) => cache.open(id).await,
        None => Err(VodError::Off),
    }
}

/// Checks a play of `id` (`.flv`, the HLS playlist) against the rules of
/// [`VOD_APP`]: `Ok(None)` when the app requires no play token, the token's claims when
/// it requires one and `token` allows playing `id`. Callers check before they take a
/// long-request permit or ask the cache, so a refused client costs no fetch.
pub(crate) async fn authorize_play(
    ctx: &EdgeContext,
    token: Option<&str>,
    id: &VodId,
) -> Result<Option<StreamClaims>, StreamAuthError> {
    ctx.tokens.authorize_stream(token, VOD_APP, &id.to_string(), StreamRight::Play).await
}
