//! VOD on the edges (`docs/vod.md`): one cached FLV file served as HTTP-FLV and as
//! HLS VOD.
//!
//! - `hls`: the index of one file's tags, cut into segments at keyframes, and its
//!   playlist, init segment and segments (fMP4, as the live packager writes them).
//!
//! Knows no sockets: the HTTP routes read through these with the file the cache gives.

// The `/vod/` routes wire it; until then only its tests use it.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod hls;
