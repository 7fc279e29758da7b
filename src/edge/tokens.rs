//! Token verification on the edge: checks a client's shared-object token, or its play or
//! publish token, locally with the cluster's signing keys and the apps' token rules,
//! fetched from any origin over the cluster-secret channel and cached. A token naming a
//! key this edge does not know triggers one refetch (at most one per [`REFETCH_EVERY`],
//! however many clients present such tokens), and keys older than [`KEYS_MAX_AGE`] are
//! refetched in the background, so a key a rotation dropped stops verifying here within
//! about that time (plus one fetch), and a changed app rule or webhook applies here
//! within that time too. An edge that never fetched the rules refuses plays and publishes
//! (503) rather than guess; one whose last fetch is old keeps using it while no origin
//! answers.
//!
//! Knows nothing of HTTP routes or RTMP: callers pass the token string they found.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use raftcast_raft::state::{AppHooks, AppTokens};
use raftcast_raft::token::{self, Claims, Rights, StreamClaims, StreamRight, TokenError, TokenKey, TokenKeys};

use crate::peer::{self, PeerClient};

/// Least time between two fetches of the keys (a flood of tokens naming unknown keys
/// costs the origins one request per this interval).
pub const REFETCH_EVERY: Duration = Duration::from_secs(1);
/// Cached keys older than this are fetched again before they verify a token.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(5);
/// One key fetch at one origin may take this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest key answer accepted from an origin.
const MAX_KEYS_ANSWER: usize = 1024 * 1024;

/// Why a request is not authorized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No token given (HTTP 401).
    #[error("a token is required to write shared objects")]
    Missing,
    /// The token does not verify or expired (HTTP 401).
    #[error("{0}")]
    Invalid(TokenError),
    /// The token is valid but does not cover this object or these rights (HTTP 403).
    #[error("the token does not allow {rights} on object {object:?}")]
    Forbidden { object: String, rights: &'static str },
    /// The app rules are not known yet (HTTP 503).
    #[error("authorization is unavailable; retry")]
    Unavailable,
}

/// A play or HLS request a token check refused: 401 (no token, or one that does not
/// verify or expired; with `WWW-Authenticate: Bearer`), 403 (a valid token for another
/// stream or right) or 503 (the rules are not known yet), as JSON
/// `{"error":{"code","message"}}` with the reason as the code. Never stored by a cache.
pub fn refused(e: StreamAuthError) -> axum::response::Response {
    let mut response = crate::http_server::json_error(e.status(), e.reason().label(), e.to_string());
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CACHE_CONTROL, axum::http::HeaderValue::from_static("no-store"));
    if e.status() == axum::http::StatusCode::UNAUTHORIZED {
        headers.insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    }
    response
}

/// What one fetch brings: keys, token rules and hooks.
type Rules = (TokenKeys, BTreeMap<String, AppTokens>, BTreeMap<String, AppHooks>);

/// Why a play or publish (or an HLS request) is not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamAuthError {
    /// The app requires a token and none was given (HTTP 401).
    #[error("this stream requires a {0} token")]
    Missing(StreamRight),
    /// The token does not verify or expired (HTTP 401).
    #[error("{0}")]
    Invalid(TokenError),
    /// The token is valid but for another stream or right (HTTP 403).
    #[error("the token does not allow {right} on {app}/{name}")]
    Forbidden { app: String, name: String, right: StreamRight },
    /// The app rules are not known yet and no origin answers (HTTP 503).
    #[error("authorization is unavailable; retry")]
    Unavailable,
}

impl StreamAuthError {
    /// The HTTP status that answers it.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            StreamAuthError::Missing(_) | StreamAuthError::Invalid(_) => StatusCode::UNAUTHORIZED,
            StreamAuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            StreamAuthError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The refusal's reason as `/metrics` labels it and error bodies name it.
    pub fn reason(&self) -> Reason {
        match self {
            StreamAuthError::Missing(_) => Reason::Missing,
            StreamAuthError::Invalid(_) => Reason::Invalid,
            StreamAuthError::Forbidden { .. } => Reason::Forbidden,
            StreamAuthError::Unavailable => Reason::Unavailable,
        }
    }
}

/// The protocol a play or publish was refused on, for `/metrics` (RTMPS counts as
/// `rtmp`: the same connection code after TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rtmp,
    Flv,
    Hls,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Rtmp, Protocol::Flv, Protocol::Hls];

    pub fn label(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::Flv => "flv",
            Protocol::Hls => "hls",
        }
    }
}

/// Why a stream token check refused, one per [`StreamAuthError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Missing,
    Invalid,
    Forbidden,
    Unavailable,
}

impl Reason {
    pub const ALL: [Reason; 4] = [Reason::Missing, Reason::Invalid, Reason::Forbidden, Reason::Unavailable];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Invalid => "invalid",
            Reason::Forbidden => "forbidden",
            Reason::Unavailable => "unavailable",
        }
    }
}

/// Plays, publishes and HLS requests refused by a token check, by protocol and reason
/// (`edge_auth_refused_total`).
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [[std::sync::atomic::AtomicU64; Reason::ALL.len()]; Protocol::ALL.len()],
}

impl Refusals {
    /// Counts `error` on `protocol` and hands it back.
    pub fn count(&self, protocol: Protocol, error: StreamAuthError) -> StreamAuthError {
        self.counts[protocol as usize][error.reason() as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        error
    }

    /// Refusals so far on `protocol` for `reason`.
    pub fn get(&self, protocol: Protocol, reason: Reason) -> u64 {
        self.counts[protocol as usize][reason as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The keys and app rules as last fetched.
#[derive(Default)]
struct KeyCache {
    keys: TokenKeys,
    apps: BTreeMap<String, AppTokens>,
    hooks: BTreeMap<String, AppHooks>,
    /// When they were fetched (`None`: never).
    fetched: Option<Instant>,
    /// Fetch attempts so far, successful or not: callers that waited for a fetch see
    /// it change and do not start another.
    attempts: u64,
}

/// Verifies tokens with cached keys. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    peers: PeerClient,
    origins: Arc<[SocketAddr]>,
    keys: Mutex<KeyCache>,
    /// Serializes fetches; holds when the last one started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// A background refetch of stale keys is under way.
    refreshing: std::sync::atomic::AtomicBool,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Verifier {
    pub fn new(peers: PeerClient, origins: Arc<[SocketAddr]>) -> Self {
        Verifier {
            inner: Arc::new(Inner {
                peers,
                origins,
                keys: Mutex::default(),
                fetching: tokio::sync::Mutex::new(None),
                refreshing: Default::default(),
            }),
        }
    }

    /// A verifier that starts with these keys and app rules and has no origin to
    /// refetch them from (unit tests of the routes that check tokens).
    #[cfg(test)]
    pub fn with_rules(keys: TokenKeys, apps: BTreeMap<String, AppTokens>) -> Self {
        let secret = raftcast_raft::rpc::ClusterSecret::new("a-test-secret-that-is-long-enough").expect("a secret");
        let verifier = Verifier::new(PeerClient::new(secret, None), Vec::new().into());
        verifier.cache(|c| {
            (c.keys, c.apps, c.fetched) = (keys, apps, Some(Instant::now()));
        });
        verifier
    }

    /// The claims of `token` when it allows `rights` on `object`.
    pub async fn authorize(&self, token: Option<&str>, object: &str, rights: Rights) -> Result<Claims, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        if token.len() > token::MAX_TOKEN_LEN {
            return Err(AuthError::Invalid(TokenError::Malformed("too long")));
        }
        self.fresh().await;
        let claims = match self.verify(token) {
            Err(TokenError::UnknownKey(_)) => {
                self.refetch(self.cache(|c| c.attempts)).await;
                self.verify(token)
            }
            other => other,
        }
        .map_err(AuthError::Invalid)?;
        if !claims.allows(object, rights) {
            let rights = if rights == Rights::Write { "writes" } else { "reads" };
            return Err(AuthError::Forbidden { object: object.to_owned(), rights });
        }
        Ok(claims)
    }

    /// Checks that `token` allows `right` on stream `app`/`name` when the app requires
    /// such a token, and returns its claims; returns `None` at once (after a refetch of
    /// stale rules) when the app does not require one.
    pub async fn authorize_stream(
        &self,
        token: Option<&str>,
        app: &str,
        name: &str,
        right: StreamRight,
    ) -> Result<Option<StreamClaims>, StreamAuthError> {
        if !self.requires(app, right).await? {
            return Ok(None);
        }
        self.check_stream_token(token, app, name, right).await.map(Some)
    }

    /// Checks a read of shared object `object` (its state or its feed, over HTTP or
    /// RTMP): objects named `APP/…` of an app that requires play tokens need a
    /// shared-object token allowing reads of them; others are open. Never waits: the
    /// cached rules decide (stale ones are refetched in the background), and an edge
    /// that never fetched them refuses reads of every object named like an app's.
    pub fn authorize_object_read(&self, token: Option<&str>, object: &str) -> Result<(), AuthError> {
        let Some((app, _)) = object.split_once('/') else { return Ok(()) };
        let (fetched, attempts, rule) =
            self.cache(|c| (c.fetched, c.attempts, c.apps.get(app).copied().unwrap_or_default()));
        if fetched.is_none_or(|t| t.elapsed() > KEYS_MAX_AGE) {
            self.refetch_in_background(attempts);
        }
        if fetched.is_none() {
            return Err(AuthError::Unavailable);
        }
        if !rule.play {
            return Ok(());
        }
        let token = token.ok_or(AuthError::Missing)?;
        let claims = self.verify(token).map_err(AuthError::Invalid)?;
        if !claims.allows(object, Rights::Read) {
            return Err(AuthError::Forbidden { object: object.to_owned(), rights: "reads" });
        }
        Ok(())
    }

    /// Whether stream tokens for `right` are required in `app`, by the current rules.
    async fn requires(&self, app: &str, right: StreamRight) -> Result<bool, StreamAuthError> {
        self.fresh().await;
        let (fetched, rule) = self.cache(|c| (c.fetched, c.apps.get(app).copied().unwrap_or_default()));
        if fetched.is_none() {
            return Err(StreamAuthError::Unavailable);
        }
        Ok(match right {
            StreamRight::Play => rule.play,
            StreamRight::Publish => rule.publish,
        })
    }

    async fn check_stream_token(
        &self,
        token: Option<&str>,
        app: &str,
        name: &str,
        right: StreamRight,
    ) -> Result<StreamClaims, StreamAuthError> {
        let token = token.ok_or(StreamAuthError::Missing(right))?;
        let claims = match self.cache(|c| token::verify_stream(token, &c.keys, now_secs())) {
            Err(TokenError::UnknownKey(_)) => {
                self.refetch(self.cache(|c| c.attempts)).await;
                self.cache(|c| token::verify_stream(token, &c.keys, now_secs()))
            }
            other => other,
        }
        .map_err(StreamAuthError::Invalid)?;
        if !claims.allows(app, name, right) {
            return Err(StreamAuthError::Forbidden { app: app.to_owned(), name: name.to_owned(), right });
        }
        Ok(claims)
    }

    /// The segment token to write into the HLS playlists of `app`/`name`, when its app
    /// requires play tokens (see [`token::segment_token`]).
    pub async fn segment_token(&self, app: &str, name: &str) -> Option<String> {
        if !self.requires(app, StreamRight::Play).await.unwrap_or(false) {
            return None;
        }
        self.segment_token_lasting(app, name, Duration::ZERO).await
    }

    /// [`segment_token`](Self::segment_token) made to last `lasting` longer (rounded up
    /// to whole 10-minute windows, a week at most): for a VOD playlist, read once and
    /// played for the file's duration (`token::segment_token_lasting`).
    pub async fn segment_token_lasting(&self, app: &str, name: &str, lasting: Duration) -> Option<String> {
        if !self.requires(app, StreamRight::Play).await.unwrap_or(false) {
            return None;
        }
        self.cache(|c| token::segment_token_lasting(&c.keys, app, name, now_secs(), lasting.as_secs()))
    }

    /// Checks an HLS media request (init, segment, part) of `app`/`name`: when its app
    /// requires play tokens, it carries a valid segment token (`st`) or a play token.
    pub async fn authorize_segment(
        &self,
        segment_token: Option<&str>,
        play_token: Option<&str>,
        app: &str,
        name: &str,
    ) -> Result<(), StreamAuthError> {
        if !self.requires(app, StreamRight::Play).await? {
            return Ok(());
        }
        if let Some(st) = segment_token {
            let verify = || self.cache(|c| token::verify_segment_token(st, &c.keys, app, name, now_secs()));
            // Another edge may have fetched a new key first and listed its segment
            // token: fetch it here too rather than refuse the player for seconds.
            let checked = match verify() {
                Err(TokenError::UnknownKey(_)) => {
                    self.refetch(self.cache(|c| c.attempts)).await;
                    verify()
                }
                other => other,
            };
            return match (checked, play_token) {
                (Ok(()), _) => Ok(()),
                (Err(_), Some(t)) => self.check_stream_token(Some(t), app, name, StreamRight::Play).await.map(drop),
                (Err(e), None) => Err(StreamAuthError::Invalid(e)),
            };
        }
        self.check_stream_token(play_token, app, name, StreamRight::Play).await.map(drop)
    }

    /// `app`'s webhooks, by the current rules (`Err`: the rules are not known yet).
    pub async fn hooks(&self, app: &str) -> Result<Option<AppHooks>, StreamAuthError> {
        self.fresh().await;
        let (fetched, hooks) = self.cache(|c| (c.fetched, c.hooks.get(app).cloned()));
        if fetched.is_none() {
            return Err(StreamAuthError::Unavailable);
        }
        Ok(hooks)
    }

    /// Waits for a first fetch of the keys and rules if there was none yet (stale ones
    /// are refetched in the background; see [`fresh`](Self::fresh)).
    pub async fn fetched_once(&self) {
        self.fresh().await;
    }

    /// Refetches keys and rules older than [`KEYS_MAX_AGE`].
    ///
    /// Only a cache that never fetched waits; a stale one answers at once and is
    /// refetched in the background (one refetch at a time), so an origin that answers
    /// slowly never adds its delay to clients' connects, plays and publishes.
    async fn fresh(&self) {
        let (fetched, attempts) = self.cache(|c| (c.fetched, c.attempts));
        match fetched {
            None => self.refetch(attempts).await,
            Some(t) if t.elapsed() > KEYS_MAX_AGE => self.refetch_in_background(attempts),
            Some(_) => {}
        }
    }

    /// Starts a refetch in the background unless one is under way.
    fn refetch_in_background(&self, attempts: u64) {
        use std::sync::atomic::Ordering::{AcqRel, Release};
        if self.inner.refreshing.swap(true, AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.refetch(attempts).await;
            me.inner.refreshing.store(false, Release);
        });
    }

    fn cache<T>(&self, f: impl FnOnce(&mut KeyCache) -> T) -> T {
        f(&mut self.inner.keys.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.cache(|c| token::verify(token, &c.keys, now_secs()))
    }

    /// Fetches the keys again, unless a fetch was attempted since the caller saw
    /// `attempts` (it waited for that one). Fetches start at least [`REFETCH_EVERY`]
    /// apart: a caller waits for its turn, and callers waiting together share one
    /// fetch, successful or not — so unreachable origins cost one try a second, not
    /// one per request.
    async fn refetch(&self, attempts: u64) {
        let mut last = self.inner.fetching.lock().await;
        if self.cache(|c| c.attempts) != attempts {
            return;
        }
        if let Some(t) = *last {
            tokio::time::sleep_until((t + REFETCH_EVERY).into()).await;
        }
        *last = Some(Instant::now());
        let mut fetched: Option<Rules> = None;
        for origin in self.inner.origins.iter() {
            match self.fetch_from(*origin).await {
                Ok(keys) => {
                    fetched = Some(keys);
                    break;
                }
                Err(e) => tracing::debug!(%origin, error = %e, "could not fetch token keys"),
            }
        }
        self.cache(|c| {
            c.attempts += 1;
            if let Some((keys, apps, hooks)) = fetched {
                c.keys = keys;
                c.apps = apps;
                c.hooks = hooks;
                c.fetched = Some(Instant::now());
            }
        });
    }

    async fn fetch_from(&self, origin: SocketAddr) -> Result<Rules, String> {
        let url = self.inner.peers.url(origin, token::TOKEN_KEYS_ROUTE);
        let res = self.inner.peers.get(url).timeout(FETCH_TIMEOUT).send().await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let body = peer::body_within(res, MAX_KEYS_ANSWER).await.map_err(|e| e.to_string())?;
        let answer: token::TokenKeysAnswer =
            serde_json::from_slice(&body).map_err(|e| format!("answer does not parse: {e}"))?;
        let keys = answer
            .keys
            .into_iter()
            .map(|(id, hex)| TokenKey::from_hex(&hex).map(|k| (id, k)).ok_or_else(|| format!("key {id} is not hex")))
            .collect::<Result<TokenKeys, String>>()?;
        Ok((keys, answer.apps, answer.hooks))
    }
}

/// The token of an HTTP request: `Authorization: Bearer T`, else `token=T` in the query.
pub fn from_request(headers: &axum::http::HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_owned());
        }
    }
    query_param(query, "token")
}

/// The value of `name` in a URL query string (`token=abc&x=1`); tokens need no
/// percent-decoding (base64url and dots).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_keys_share_fetches_even_when_origins_are_unreachable() {
        // A port nobody listens on: every fetch fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let secret = raftcast_raft::rpc::ClusterSecret::new("a-test-secret-that-is-long-enough").unwrap();
        let verifier = Verifier::new(PeerClient::new(secret, None), vec![closed].into());
        let claims = Claims {
            key_id: 9,
            object: Some("o".into()),
            object_prefix: None,
            rights: Rights::Write,
            expires_at: u64::MAX,
            subject: "s".into(),
            quota: token::DEFAULT_QUOTA,
            persistent: false,
        };
        let forged = token::sign(&claims, &TokenKey([1; 32]));
        let started = Instant::now();
        let calls = (0..20).map(|_| {
            let (verifier, forged) = (verifier.clone(), forged.clone());
            tokio::spawn(async move { verifier.authorize(Some(&forged), "o", Rights::Write).await })
        });
        for result in futures::future::join_all(calls).await {
            assert_eq!(result.unwrap(), Err(AuthError::Invalid(TokenError::UnknownKey(9))));
        }
        // One fetch for the first use and one for the unknown key, a second apart,
        // shared by all 20 (one each would take 20 s or more).
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(verifier.cache(|c| c.attempts) <= 3);
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(from_request(&headers, Some("x=1&token=abc")).as_deref(), Some("abc"));
        assert_eq!(from_request(&headers, Some("token=")), None);
        assert_eq!(from_request(&headers, None), None);
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer rc1.x.y".parse().unwrap());
        assert_eq!(from_request(&headers, Some("token=abc")).as_deref(), Some("rc1.x.y"));
    }
}
