//! Signed access tokens: what a web application hands its clients so they may read or
//! write some shared objects ([`Claims`], prefix `rc1`), or play or publish some streams
//! ([`StreamClaims`], prefix `rs1`), through any edge, without any cluster secret.
//!
//! A token is `rc1.<claims>.<mac>`: `claims` is base64url (no padding) of a compact JSON
//! object, `mac` base64url of HMAC-SHA256 over `rc1.<claims>` with the signing key the
//! claims name (`k`). Keys are replicated through Raft (`Command::AddTokenKey`), so every
//! origin signs and every edge verifies with the same keys; a rotation adds a key and
//! keeps the previous one ([`MAX_TOKEN_KEYS`]), so tokens already handed out stay valid
//! until their key is dropped.
//!
//! Tokens are hostile input: a length bound, strict base64 (canonical, no padding),
//! claims that reject unknown fields (a verifier never ignores a restriction it does not
//! understand: a newer claim makes an older verifier refuse), and a constant-time MAC
//! comparison. The format is versioned by its prefix, and the prefix is signed: a token
//! of one kind never verifies as the other.
//!
//! HLS segment requests carry a [`segment_token`] instead of the viewer's token: one
//! value per stream and [`SEGMENT_WINDOW_SECS`] window, derived from the newest key, so
//! every edge writes the same segment URLs into its playlists and every viewer of a
//! stream fetches the same URLs (cacheable by a CDN) while a URL stops working within
//! two windows.
//!
//! Pure: no clock (callers pass `now`), no I/O, no logging of keys. Holds the wire
//! shape of the key route too ([`TokenKeysAnswer`]), shared by origins and edges.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix naming the token format.
pub const TOKEN_PREFIX: &str = "rc1";
/// Longest token accepted, in bytes; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Bytes of a signing key.
pub const KEY_BYTES: usize = 32;
/// Signing keys the cluster keeps: the newest signs, the older ones still verify.
pub const MAX_TOKEN_KEYS: usize = 2;
/// Longest lifetime of a token, in seconds (30 days).
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;
/// Lifetime of a token when the issuer gives none, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 3600;
/// Longest subject, in bytes.
pub const MAX_SUBJECT_LEN: usize = 128;

/// A signing key. Its `Debug` never shows the bytes (commands are logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenKey(pub [u8; KEY_BYTES]);

impl TokenKey {
    /// A fresh random key.
    pub fn random() -> Self {
        TokenKey(rand::random())
    }

    /// The key as hex (only for cluster peers holding the cluster secret).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A key from [`to_hex`](Self::to_hex).
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != KEY_BYTES * 2 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; KEY_BYTES];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(TokenKey(out))
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Signing keys by id.
pub type TokenKeys = BTreeMap<u32, TokenKey>;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rights {
    #[serde(rename = "r")]
    Read,
    /// Write implies read.
    #[serde(rename = "w")]
    Write,
}

/// Quotas of a token's subject, enforced by the state machine on client writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Objects the subject may have created and still exist.
    #[serde(rename = "o")]
    pub objects: u32,
    /// Slots, over all objects the subject created.
    #[serde(rename = "s")]
    pub slots: u32,
    /// Bytes (slot names and encoded values), over all objects the subject created.
    #[serde(rename = "b")]
    pub bytes: u64,
}

/// The quota of a token whose issuer named none.
pub const DEFAULT_QUOTA: Quota = Quota { objects: 16, slots: 1024, bytes: 1024 * 1024 };

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Id of the signing key.
    #[serde(rename = "k")]
    pub key_id: u32,
    /// Exactly this object…
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// …or every object whose name starts with this (exactly one of the two is set).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub object_prefix: Option<String>,
    #[serde(rename = "r")]
    pub rights: Rights,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: u64,
    /// Who the quota is charged to.
    #[serde(rename = "s")]
    pub subject: String,
    #[serde(rename = "q")]
    pub quota: Quota,
    /// Objects this token creates outlive their subscribers.
    #[serde(rename = "t", default, skip_serializing_if = "std::ops::Not::not")]
    pub persistent: bool,
}

impl Claims {
    /// Whether these claims allow `rights` on `object`.
    pub fn allows(&self, object: &str, rights: Rights) -> bool {
        let in_scope = match (&self.object, &self.object_prefix) {
            (Some(o), None) => o == object,
            (None, Some(p)) => !p.is_empty() && object.starts_with(p.as_str()),
            _ => false,
        };
        in_scope && self.rights >= rights
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// The key it names is not known (yet, or any more).
    #[error("the token names an unknown signing key {0}")]
    UnknownKey(u32),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token expired")]
    Expired,
}

/// Route where edges fetch the token signing keys (cluster secret required).
pub const TOKEN_KEYS_ROUTE: &str = "/internal/token-keys";

/// The signing keys as [`TOKEN_KEYS_ROUTE`] answers them (origins serve it, edges
/// fetch it), with the apps' stream token rules and webhooks: `{"keys": {"<id>":
/// "<hex>"}, "apps": {"<app>": {"play": b, "publish": b}}, "hooks": {"<app>": {…}}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokenKeysAnswer {
    pub keys: std::collections::BTreeMap<u32, String>,
    #[serde(default)]
    pub apps: std::collections::BTreeMap<String, crate::state::AppTokens>,
    #[serde(default)]
    pub hooks: std::collections::BTreeMap<String, crate::state::AppHooks>,
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8; KEY_BYTES], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut padded = [0u8; BLOCK];
    padded[..KEY_BYTES].copy_from_slice(key);
    let mut inner = Sha256::new();
    inner.update(padded.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(padded.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding.
pub fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
        }
    }
    out
}

/// Strict base64url without padding: only the alphabet, no length of 1 mod 4, and the
/// unused low bits of the last character zero (so every byte string has one encoding).
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| B64.iter().position(|d| *d == c).map(|p| p as u32);
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= digit(*c)? << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        let unused = 24 - 8 * bytes as u32;
        if chunk.len() < 4 && n & ((1 << unused) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// `<prefix>.<claims>.<mac>` for `claims` signed with `key`.
fn sign_as(prefix: &str, claims: &impl Serialize, key: &TokenKey) -> String {
    let json = serde_json::to_vec(claims).expect("claims always serialize");
    let signed = format!("{prefix}.{}", b64url_encode(&json));
    let mac = hmac_sha256(&key.0, signed.as_bytes());
    format!("{signed}.{}", b64url_encode(&mac))
}

/// The claims of a `prefix` token whose signature verifies with the key they name
/// (`key_id`). Checks nothing else.
fn open_as<C: serde::de::DeserializeOwned>(
    prefix: &str,
    token: &str,
    keys: &TokenKeys,
    key_id: impl Fn(&C) -> u32,
) -> Result<C, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed("too long"));
    }
    let rest =
        token.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')).ok_or(TokenError::Malformed("unknown format"))?;
    let (claims_b64, mac_b64) = rest.split_once('.').ok_or(TokenError::Malformed("no signature"))?;
    let json = b64url_decode(claims_b64).ok_or(TokenError::Malformed("claims are not base64url"))?;
    let mac = b64url_decode(mac_b64).ok_or(TokenError::Malformed("signature is not base64url"))?;
    let claims: C = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("claims do not parse"))?;
    let id = key_id(&claims);
    let key = keys.get(&id).ok_or(TokenError::UnknownKey(id))?;
    let signed = &token[..prefix.len() + 1 + claims_b64.len()];
    if !constant_time_eq(&hmac_sha256(&key.0, signed.as_bytes()), &mac) {
        return Err(TokenError::BadSignature);
    }
    Ok(claims)
}

/// Signs `claims` with `key` (whose id must be `claims.key_id`).
pub fn sign(claims: &Claims, key: &TokenKey) -> String {
    sign_as(TOKEN_PREFIX, claims, key)
}

/// Verifies `token` with `keys` at `now` (Unix seconds); its claims when it holds.
pub fn verify(token: &str, keys: &TokenKeys, now: u64) -> Result<Claims, TokenError> {
    let claims: Claims = open_as(TOKEN_PREFIX, token, keys, |c: &Claims| c.key_id)?;
    if claims.object.is_some() == claims.object_prefix.is_some() {
        return Err(TokenError::Malformed("exactly one of object and object prefix"));
    }
    if now >= claims.expires_at {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Prefix naming the stream token format.
pub const STREAM_TOKEN_PREFIX: &str = "rs1";

/// What a stream token allows. Separate rights: a publish token does not play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StreamRight {
    #[serde(rename = "play")]
    Play,
    #[serde(rename = "publish")]
    Publish,
}

impl fmt::Display for StreamRight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamRight::Play => "play",
            StreamRight::Publish => "publish",
        })
    }
}

/// The claims of a stream token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamClaims {
    /// Id of the signing key.
    #[serde(rename = "k")]
    pub key_id: u32,
    #[serde(rename = "a")]
    pub app: String,
    /// Exactly this stream of the app…
    #[serde(rename = "n", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// …or every stream of the app whose name starts with this (empty: all of them;
    /// exactly one of the two is set).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    #[serde(rename = "r")]
    pub right: StreamRight,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub expires_at: u64,
}

impl StreamClaims {
    /// Whether these claims allow `right` on stream `app`/`name`.
    pub fn allows(&self, app: &str, name: &str, right: StreamRight) -> bool {
        let in_scope = match (&self.name, &self.name_prefix) {
            (Some(n), None) => n == name,
            (None, Some(p)) => name.starts_with(p.as_str()),
            _ => false,
        };
        self.app == app && in_scope && self.right == right
    }
}

/// Signs stream `claims` with `key` (whose id must be `claims.key_id`).
pub fn sign_stream(claims: &StreamClaims, key: &TokenKey) -> String {
    sign_as(STREAM_TOKEN_PREFIX, claims, key)
}

/// Verifies stream `token` with `keys` at `now` (Unix seconds); its claims when it holds.
pub fn verify_stream(token: &str, keys: &TokenKeys, now: u64) -> Result<StreamClaims, TokenError> {
    let claims: StreamClaims = open_as(STREAM_TOKEN_PREFIX, token, keys, |c: &StreamClaims| c.key_id)?;
    if claims.name.is_some() == claims.name_prefix.is_some() {
        return Err(TokenError::Malformed("exactly one of name and name prefix"));
    }
    if now >= claims.expires_at {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Length of one segment-token window, in seconds. A segment URL from a playlist works
/// until the end of the window after the one it was written in: at least this long.
pub const SEGMENT_WINDOW_SECS: u64 = 600;
/// Bytes of a segment token's MAC (truncated HMAC-SHA256: 128 bits).
const SEGMENT_MAC_BYTES: usize = 16;

/// Most extra windows a lasting segment token may name ([`segment_token_lasting`]):
/// a week.
pub const MAX_SEGMENT_EXTRA_WINDOWS: u64 = 7 * 24 * 3600 / SEGMENT_WINDOW_SECS;

/// The segment token of stream `app`/`name` at `now`: `<key id>.<window>.<mac>`, signed
/// with the newest key (`None` when there is none). The same on every edge and for
/// every viewer during one window.
pub fn segment_token(keys: &TokenKeys, app: &str, name: &str, now: u64) -> Option<String> {
    segment_token_lasting(keys, app, name, now, 0)
}

/// A segment token that stays valid `lasting_secs` longer than [`segment_token`]'s
/// (rounded up to whole windows, at most [`MAX_SEGMENT_EXTRA_WINDOWS`]):
/// `<key id>.<window>+<extra windows>.<mac>`, the extra windows under the MAC. For a
/// playlist read once and played for that long (a VOD file's duration): still the
/// same on every edge and for every viewer of that file during one window.
pub fn segment_token_lasting(keys: &TokenKeys, app: &str, name: &str, now: u64, lasting_secs: u64) -> Option<String> {
    let (id, key) = keys.last_key_value()?;
    let window = now / SEGMENT_WINDOW_SECS;
    let extra = lasting_secs.div_ceil(SEGMENT_WINDOW_SECS).min(MAX_SEGMENT_EXTRA_WINDOWS);
    let mac = b64url_encode(&segment_mac(key, app, name, window, extra));
    Some(if extra == 0 { format!("{id}.{window}.{mac}") } else { format!("{id}.{window}+{extra}.{mac}") })
}

fn segment_mac(key: &TokenKey, app: &str, name: &str, window: u64, extra: u64) -> [u8; SEGMENT_MAC_BYTES] {
    let signed = if extra == 0 {
        format!("rseg1\n{app}\n{name}\n{window}")
    } else {
        format!("rseg2\n{app}\n{name}\n{window}\n{extra}")
    };
    let mac = hmac_sha256(&key.0, signed.as_bytes());
    mac[..SEGMENT_MAC_BYTES].try_into().expect("a prefix of the MAC")
}

/// Checks a segment token of stream `app`/`name` at `now`: made with a known key for
/// this stream, in the current window or the one before (or, for a lasting one, up to
/// its extra windows later).
pub fn verify_segment_token(token: &str, keys: &TokenKeys, app: &str, name: &str, now: u64) -> Result<(), TokenError> {
    if token.len() > 64 {
        return Err(TokenError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(id), Some(window), Some(mac), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed("not a segment token"));
    };
    let malformed = |_| TokenError::Malformed("not a segment token");
    let id: u32 = id.parse().map_err(malformed)?;
    let (window, extra) = match window.split_once('+') {
        None => (window.parse::<u64>().map_err(malformed)?, 0),
        Some((window, extra)) => {
            let extra: u64 = extra.parse().map_err(malformed)?;
            // One spelling per token: a lasting token names at least one extra window.
            if extra == 0 || extra > MAX_SEGMENT_EXTRA_WINDOWS {
                return Err(TokenError::Malformed("not a segment token"));
            }
            (window.parse::<u64>().map_err(malformed)?, extra)
        }
    };
    let mac = b64url_decode(mac).ok_or(TokenError::Malformed("signature is not base64url"))?;
    let key = keys.get(&id).ok_or(TokenError::UnknownKey(id))?;
    if !constant_time_eq(&segment_mac(key, app, name, window, extra), &mac) {
        return Err(TokenError::BadSignature);
    }
    let current = now / SEGMENT_WINDOW_SECS;
    if window > current {
        return Err(TokenError::Malformed("a segment token from the future"));
    }
    if current - window > 1 + extra {
        return Err(TokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(object: &str, rights: Rights, expires_at: u64) -> Claims {
        Claims {
            key_id: 1,
            object: Some(object.into()),
            object_prefix: None,
            rights,
            expires_at,
            subject: "alice".into(),
            quota: DEFAULT_QUOTA,
            persistent: false,
        }
    }

    fn keys() -> TokenKeys {
        [(1, TokenKey([7; KEY_BYTES]))].into()
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        // RFC 4231 test case 2 uses a 4-byte key; ours are 32 bytes. Check against the
        // definition with a key of "Jefe" zero-padded to 32 bytes, which HMAC treats
        // the same as "Jefe" (keys are zero-padded to the block size).
        let mut key = [0u8; KEY_BYTES];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn base64url_round_trips_and_is_strict() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = b64url_encode(&data);
            assert!(!s.contains('='));
            assert_eq!(b64url_decode(&s), Some(data));
        }
        assert_eq!(b64url_decode("QQ"), Some(b"A".to_vec()));
        assert_eq!(b64url_decode("QR"), None, "non-zero unused bits");
        assert_eq!(b64url_decode("QQ=="), None, "padding");
        assert_eq!(b64url_decode("Q"), None);
        assert_eq!(b64url_decode("a+b/"), None, "standard alphabet");
    }

    #[test]
    fn a_signed_token_verifies_and_allows_only_its_scope() {
        let token = sign(&claims("chat", Rights::Write, 100), &keys()[&1]);
        assert!(token.starts_with("rc1."));
        let got = verify(&token, &keys(), 99).unwrap();
        assert!(got.allows("chat", Rights::Write));
        assert!(got.allows("chat", Rights::Read), "write implies read");
        assert!(!got.allows("chat2", Rights::Write));
        assert!(!got.allows("cha", Rights::Read));
        let read = verify(&sign(&claims("chat", Rights::Read, 100), &keys()[&1]), &keys(), 0).unwrap();
        assert!(!read.allows("chat", Rights::Write));
        let mut prefix = claims("x", Rights::Write, 100);
        prefix.object = None;
        prefix.object_prefix = Some("live/test/".into());
        let prefix = verify(&sign(&prefix, &keys()[&1]), &keys(), 0).unwrap();
        assert!(prefix.allows("live/test/chat", Rights::Write));
        assert!(!prefix.allows("live/other/chat", Rights::Write));
    }

    #[test]
    fn expired_forged_and_unknown_key_tokens_are_refused() {
        let token = sign(&claims("chat", Rights::Write, 100), &keys()[&1]);
        assert_eq!(verify(&token, &keys(), 100), Err(TokenError::Expired));
        let other: TokenKeys = [(1, TokenKey([8; KEY_BYTES]))].into();
        assert_eq!(verify(&token, &other, 0), Err(TokenError::BadSignature));
        assert_eq!(verify(&token, &TokenKeys::new(), 0), Err(TokenError::UnknownKey(1)));
        // Changing the claims (a wider scope) breaks the signature.
        let (head, mac) = token.rsplit_once('.').unwrap();
        let forged_claims = claims("admin-only", Rights::Write, 100);
        let forged = format!("rc1.{}.{mac}", b64url_encode(&serde_json::to_vec(&forged_claims).unwrap()));
        assert_ne!(head, forged.rsplit_once('.').unwrap().0);
        assert_eq!(verify(&forged, &keys(), 0), Err(TokenError::BadSignature));
        for bad in ["", "rc1", "rc1.", "rc2.a.b", "rc1.!!.a", &"a".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(matches!(verify(bad, &keys(), 0), Err(TokenError::Malformed(_))), "{bad:?}");
        }
        // An unknown claim is refused, not ignored.
        let json = br#"{"k":1,"o":"chat","r":"w","e":100,"s":"a","q":{"o":1,"s":1,"b":1},"z":1}"#;
        let signed = format!("rc1.{}", b64url_encode(json));
        let token = format!("{signed}.{}", b64url_encode(&hmac_sha256(&[7; KEY_BYTES], signed.as_bytes())));
        assert!(matches!(verify(&token, &keys(), 0), Err(TokenError::Malformed(_))));
    }

    fn stream(name: Option<&str>, prefix: Option<&str>, right: StreamRight, expires_at: u64) -> StreamClaims {
        StreamClaims {
            key_id: 1,
            app: "live".into(),
            name: name.map(Into::into),
            name_prefix: prefix.map(Into::into),
            right,
            expires_at,
        }
    }

    #[test]
    fn stream_tokens_allow_their_app_stream_and_right_only() {
        let token = sign_stream(&stream(Some("cam"), None, StreamRight::Play, 100), &keys()[&1]);
        assert!(token.starts_with("rs1."));
        let got = verify_stream(&token, &keys(), 99).unwrap();
        assert!(got.allows("live", "cam", StreamRight::Play));
        assert!(!got.allows("live", "cam", StreamRight::Publish), "play does not publish");
        assert!(!got.allows("live", "cam2", StreamRight::Play));
        assert!(!got.allows("other", "cam", StreamRight::Play));
        let publish =
            verify_stream(&sign_stream(&stream(Some("cam"), None, StreamRight::Publish, 100), &keys()[&1]), &keys(), 0)
                .unwrap();
        assert!(!publish.allows("live", "cam", StreamRight::Play), "publish does not play");
        let all = verify_stream(&sign_stream(&stream(None, Some(""), StreamRight::Play, 100), &keys()[&1]), &keys(), 0)
            .unwrap();
        assert!(all.allows("live", "anything", StreamRight::Play));
        let some =
            verify_stream(&sign_stream(&stream(None, Some("team-"), StreamRight::Play, 100), &keys()[&1]), &keys(), 0)
                .unwrap();
        assert!(some.allows("live", "team-a", StreamRight::Play) && !some.allows("live", "x", StreamRight::Play));
        assert_eq!(verify_stream(&token, &keys(), 100), Err(TokenError::Expired));
        let other: TokenKeys = [(1, TokenKey([8; KEY_BYTES]))].into();
        assert_eq!(verify_stream(&token, &other, 0), Err(TokenError::BadSignature));
        let both = sign_stream(&stream(Some("a"), Some("b"), StreamRight::Play, 100), &keys()[&1]);
        assert!(matches!(verify_stream(&both, &keys(), 0), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn the_two_kinds_of_token_never_pass_for_each_other() {
        let object = sign(&claims("chat", Rights::Write, 100), &keys()[&1]);
        assert!(matches!(verify_stream(&object, &keys(), 0), Err(TokenError::Malformed(_))));
        let stream = sign_stream(&stream(Some("cam"), None, StreamRight::Play, 100), &keys()[&1]);
        assert!(matches!(verify(&stream, &keys(), 0), Err(TokenError::Malformed(_))));
        // The same claims bytes under the other prefix: the signature covers the prefix.
        let swapped = stream.replacen("rs1.", "rc1.", 1);
        assert!(verify(&swapped, &keys(), 0).is_err());
    }

    #[test]
    fn segment_tokens_are_per_stream_and_window_and_last_two_windows() {
        let w = SEGMENT_WINDOW_SECS;
        let t = segment_token(&keys(), "live", "cam", 10 * w + 5).unwrap();
        assert_eq!(
            segment_token(&keys(), "live", "cam", 10 * w + w - 1).as_deref(),
            Some(t.as_str()),
            "one per window"
        );
        assert!(verify_segment_token(&t, &keys(), "live", "cam", 10 * w).is_ok());
        assert!(verify_segment_token(&t, &keys(), "live", "cam", 11 * w + w - 1).is_ok(), "the next window too");
        assert_eq!(verify_segment_token(&t, &keys(), "live", "cam", 12 * w), Err(TokenError::Expired));
        assert_eq!(verify_segment_token(&t, &keys(), "live", "cam2", 10 * w), Err(TokenError::BadSignature));
        assert!(verify_segment_token(&t, &keys(), "live", "cam", 9 * w).is_err(), "from the future");
        assert_eq!(verify_segment_token("2.10.AAAA", &keys(), "live", "cam", 10 * w), Err(TokenError::UnknownKey(2)));
        for bad in ["", "1", "1.2", "1.2.3.4", "x.1.AA", &"1".repeat(100)] {
            assert!(verify_segment_token(bad, &keys(), "live", "cam", 10 * w).is_err(), "{bad:?}");
        }
        assert_eq!(segment_token(&TokenKeys::new(), "live", "cam", 0), None);
    }

    #[test]
    fn a_lasting_segment_token_lasts_its_extra_windows_and_no_more() {
        let w = SEGMENT_WINDOW_SECS;
        // An hour and a minute: 7 extra windows, the same for a whole window.
        let t = segment_token_lasting(&keys(), "vod", "42", 10 * w + 5, 3660).unwrap();
        assert!(t.starts_with("1.10+7."), "{t}");
        assert_eq!(segment_token_lasting(&keys(), "vod", "42", 10 * w + w - 1, 3660), Some(t.clone()));
        assert!(verify_segment_token(&t, &keys(), "vod", "42", 18 * w + w - 1).is_ok(), "1 + 7 windows later");
        assert_eq!(verify_segment_token(&t, &keys(), "vod", "42", 19 * w), Err(TokenError::Expired));
        assert_eq!(verify_segment_token(&t, &keys(), "vod", "43", 10 * w), Err(TokenError::BadSignature));
        // The extra windows are signed: changing them breaks the MAC.
        let stretched = t.replacen("+7.", "+70.", 1);
        assert_eq!(verify_segment_token(&stretched, &keys(), "vod", "42", 10 * w), Err(TokenError::BadSignature));
        let short = t.replacen("+7.", ".", 1);
        assert_eq!(verify_segment_token(&short, &keys(), "vod", "42", 10 * w), Err(TokenError::BadSignature));
        for bad in [t.replacen("+7.", "+0.", 1), t.replacen("+7.", "+.", 1), t.replacen("+7.", "+1009.", 1)] {
            assert!(
                matches!(verify_segment_token(&bad, &keys(), "vod", "42", 10 * w), Err(TokenError::Malformed(_))),
                "{bad}"
            );
        }
        // Nothing to add: the plain token; a week at most.
        assert_eq!(segment_token_lasting(&keys(), "vod", "42", 10 * w, 0), segment_token(&keys(), "vod", "42", 10 * w));
        let week = segment_token_lasting(&keys(), "vod", "42", 10 * w, u64::MAX).unwrap();
        assert!(week.starts_with(&format!("1.10+{MAX_SEGMENT_EXTRA_WINDOWS}.")), "{week}");
    }

    #[test]
    fn keys_never_show_in_debug_output() {
        let key = TokenKey([0xab; KEY_BYTES]);
        assert!(!format!("{key:?}").contains("ab"));
        assert_eq!(TokenKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(TokenKey::from_hex("zz"), None);
    }
}
