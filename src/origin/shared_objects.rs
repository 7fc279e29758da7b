//! The live side of shared objects at an origin: change feeds (for edges on internal
//! routes, and the admin API's Server-Sent Events), send-message broadcasts across
//! origins, who watches which object here, and the removal of temporary objects that
//! nobody anywhere watches any more.
//!
//! The objects themselves live in the replicated state machine; nothing here is durable
//! and nothing here decides a write.
//!
//! **Subscribers of temporary objects.** An edge watches an object (one feed at one
//! origin) while any of its clients uses it; a web page or bot watching the admin SSE
//! counts too. Each origin counts the feeds it serves. The leader asks every member
//! once a second which objects are watched there; a temporary object that no member
//! reports for `--temporary-grace` ([`DEFAULT_TEMPORARY_GRACE`](crate::origin::config::DEFAULT_TEMPORARY_GRACE)) — and only when every member answered — is removed
//! with a version-guarded `DeleteObject`, so a write in between keeps it. A dead edge's
//! feeds end with its TCP connections; an edge that loses an origin re-opens its feeds
//! at another within about a second, well inside the grace.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use raftcast_raft::command::escape_segment;
use raftcast_raft::state::{Event, ObjectChange, SharedObject};
use raftcast_raft::{Command, NodeId, ObjectName, Response as SmResponse};
use raftcast_storage::{Notice, StateHandle};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::proposer::Proposer;
use crate::lease::{Lease, Leases};
use crate::peer::{self, PeerClient};
use raftcast_raft::typ::Raft;

/// Send-message broadcasts waiting for this origin's slowest feed; a feed that falls
/// further behind skips the oldest (broadcasts are best effort, like RTMP's).
const MESSAGE_QUEUE: usize = 1024;
/// Largest send-message body accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How often the leader looks for unwatched temporary objects.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// One peer request (a relayed broadcast, a watched-objects query) may take this long.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest watched-objects answer accepted from a peer.
const MAX_WATCHED_ANSWER: usize = 4 * 1024 * 1024;
/// Keep-alive comment interval of feeds: edges treat 3 missed ones as a dead origin.
pub const FEED_KEEPALIVE: Duration = Duration::from_secs(1);

/// A send-message broadcast: which object, and `{"handler", "args"}`.
#[derive(Debug)]
struct Broadcast {
    object: String,
    data: serde_json::Value,
}

/// Shared-object feeds, broadcasts and watcher counts of this origin. Cheap to clone.
#[derive(Clone)]
pub struct ObjectHub {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    peers: PeerClient,
    raft: Raft,
    state: StateHandle,
    proposer: Proposer,
    messages: broadcast::Sender<Arc<Broadcast>>,
    /// Open feeds per object.
    /// Open feeds, by object.
    watchers: Leases<String, ()>,
}

impl ObjectHub {
    pub fn new(id: NodeId, peers: PeerClient, raft: Raft, state: StateHandle, proposer: Proposer) -> Self {
        let (messages, _) = broadcast::channel(MESSAGE_QUEUE);
        ObjectHub { inner: Arc::new(Inner { id, peers, raft, state, proposer, messages, watchers: Leases::default() }) }
    }

    /// Objects with at least one open feed here.
    pub fn watched(&self) -> Vec<String> {
        self.inner.watchers.keys()
    }

    /// The change feed of `name` as Server-Sent Events, ending at shutdown.
    ///
    /// Without `since`, it starts with a `state` event (the whole object; version 0
    /// when it does not exist). With `since` (the version the watcher already has) it
    /// sends `state` only when this origin's object is newer; when this origin is
    /// behind, it waits and sends only changes past `since`. Then one `change` per
    /// committed change in commit order, and a `message` per broadcast. A watcher that
    /// falls behind, or a snapshot install, gets a fresh `state`.
    pub fn feed(
        &self,
        name: String,
        since: Option<u64>,
        shutdown: CancellationToken,
    ) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
        let feed = Feed {
            _watching: self.inner.watchers.acquire(&name, || ()),
            notices: self.inner.state.subscribe(),
            messages: self.inner.messages.subscribe(),
            hub: self.clone(),
            name,
            since,
            version: None,
            pending: VecDeque::new(),
        };
        let stream = futures::stream::unfold(feed, |mut f| async move { f.next().await.map(|e| (Ok(e), f)) });
        let stream = futures::StreamExt::take_until(stream, async move { shutdown.cancelled().await });
        Sse::new(stream).keep_alive(KeepAlive::new().interval(FEED_KEEPALIVE))
    }

    /// Delivers a broadcast to this origin's feeds of `object`, and unless `relayed`,
    /// to every other member's (best effort, each within [`PEER_TIMEOUT`]).
    pub fn broadcast(&self, object: String, data: serde_json::Value, relayed: bool) {
        if !relayed {
            let peers = self.peers();
            let body = data.to_string();
            for (peer, http) in peers {
                let path = format!("/internal/objects/{}/messages?relayed=true", escape_segment(&object));
                let url = self.inner.peers.url(http, &path);
                let req = self
                    .inner
                    .peers
                    .post(url)
                    .timeout(PEER_TIMEOUT)
                    .header("content-type", "application/json")
                    .body(body.clone());
                tokio::spawn(async move {
                    match req.send().await {
                        Ok(res) if res.status().is_success() => {}
                        Ok(res) => tracing::debug!(peer, status = %res.status(), "broadcast relay refused"),
                        Err(e) => tracing::debug!(peer, error = %e, "broadcast relay failed"),
                    }
                });
            }
        }
        // No receiver is fine: nobody here watches anything.
        let _ = self.inner.messages.send(Arc::new(Broadcast { object, data }));
    }

    /// Every other member: id → admin HTTP address.
    fn peers(&self) -> Vec<(NodeId, String)> {
        let m = self.inner.raft.metrics().borrow().membership_config.clone();
        m.membership().nodes().filter(|(id, _)| **id != self.inner.id).map(|(id, n)| (*id, n.http.clone())).collect()
    }

    /// The objects watched at `peer`, `None` when it did not answer.
    async fn watched_at(&self, http: &str) -> Option<Vec<String>> {
        let res =
            self.inner.peers.get(self.inner.peers.url(http, WATCHED_ROUTE)).timeout(PEER_TIMEOUT).send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        let body = peer::body_within(res, MAX_WATCHED_ANSWER).await.ok()?;
        serde_json::from_slice::<WatchedAnswer>(&body).ok().map(|a| a.objects)
    }
}

/// The whole object as feeds and the admin API show it.
pub fn object_json(name: &str, obj: &SharedObject) -> serde_json::Value {
    let slots: serde_json::Map<String, serde_json::Value> =
        obj.slots.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    json!({ "name": name, "version": obj.version, "persistent": obj.persistent, "slots": slots })
}

/// One change as feeds show it.
pub fn change_json(version: u64, change: &ObjectChange) -> serde_json::Value {
    match change {
        ObjectChange::Set { slots } => {
            let slots: serde_json::Map<_, _> = slots.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
            json!({ "version": version, "set": slots })
        }
        ObjectChange::Deleted { slot } => json!({ "version": version, "deleted": slot }),
        ObjectChange::Cleared => json!({ "version": version, "cleared": true }),
        ObjectChange::Removed => json!({ "version": 0, "removed": true }),
    }
}

struct Feed {
    hub: ObjectHub,
    name: String,
    notices: raftcast_storage::NoticeReceiver,
    messages: broadcast::Receiver<Arc<Broadcast>>,
    /// The version the watcher said it has.
    since: Option<u64>,
    /// Version last sent (or known to the watcher); `None` before the first event.
    version: Option<u64>,
    pending: VecDeque<SseEvent>,
    /// Counts this feed as a watcher of the object while it lives.
    _watching: Lease<String, ()>,
}

impl Feed {
    fn current(&self) -> SharedObject {
        self.hub.inner.state.read(|sm| sm.objects.get(&self.name).cloned()).unwrap_or_default()
    }

    fn state_event(&mut self) -> SseEvent {
        let obj = self.current();
        self.version = Some(obj.version);
        SseEvent::default().event("state").id(obj.version.to_string()).data(object_json(&self.name, &obj).to_string())
    }

    async fn next(&mut self) -> Option<SseEvent> {
        if self.version.is_none() {
            match self.since.take() {
                // This origin is level with the watcher, or behind it: changes only.
                Some(since) if self.current().version <= since => self.version = Some(since),
                _ => return Some(self.state_event()),
            }
        }
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            tokio::select! {
                notice = self.notices.recv() => match notice {
                    Ok(Notice::Applied { events, .. }) => {
                        for event in events.iter() {
                            let Event::Object { object, version, change } = event else { continue };
                            if *object != self.name {
                                continue;
                            }
                            let removed = matches!(change, ObjectChange::Removed);
                            if !removed && Some(*version) <= self.version {
                                continue;
                            }
                            self.version = Some(*version);
                            let data = change_json(*version, change).to_string();
                            self.pending.push_back(SseEvent::default().event("change").id(version.to_string()).data(data));
                        }
                    }
                    Ok(Notice::Replaced { .. }) | Err(RecvError::Lagged(_)) => return Some(self.state_event()),
                    Err(RecvError::Closed) => return None,
                },
                message = self.messages.recv() => match message {
                    Ok(b) if b.object == self.name => {
                        return Some(SseEvent::default().event("message").data(b.data.to_string()));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => tracing::debug!(object = %self.name, skipped = n, "feed skipped broadcasts"),
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }
}

/// Route of the objects watched at an origin.
pub const WATCHED_ROUTE: &str = "/internal/objects-watched";

#[derive(Debug, serde::Serialize, Deserialize)]
struct WatchedAnswer {
    origin: NodeId,
    objects: Vec<String>,
}

fn refuse_without_secret(hub: &ObjectHub, headers: &HeaderMap) -> Option<Response> {
    (!hub.inner.peers.secret().admits(headers))
        .then(|| (StatusCode::UNAUTHORIZED, "missing or wrong cluster secret").into_response())
}

fn bad_request(message: impl Into<String>) -> Response {
    crate::http_server::json_error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Whether `data` is a broadcast: `{"handler": string, "args": array}` of at most
/// [`MAX_MESSAGE_BYTES`].
pub fn check_broadcast(data: &serde_json::Value) -> Result<(), String> {
    if !data.get("handler").is_some_and(serde_json::Value::is_string)
        || !data.get("args").is_some_and(serde_json::Value::is_array)
    {
        return Err("a broadcast is {\"handler\": string, \"args\": array}".to_owned());
    }
    if data.to_string().len() > MAX_MESSAGE_BYTES {
        return Err(format!("a broadcast may take at most {MAX_MESSAGE_BYTES} bytes"));
    }
    Ok(())
}

pub use raftcast_raft::token::{TokenKeysAnswer, TOKEN_KEYS_ROUTE};

/// [`TOKEN_KEYS_ROUTE`]: the replicated token signing keys, for edges, which verify
/// tokens locally. Only with the cluster secret; the answer is never logged.
pub async fn token_keys_route(State((hub, _)): State<(ObjectHub, CancellationToken)>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_without_secret(&hub, &headers) {
        return refused;
    }
    let answer = hub.inner.state.read(|sm| TokenKeysAnswer {
        keys: sm.token_keys.iter().map(|(id, k)| (*id, k.to_hex())).collect(),
        apps: sm.app_tokens.clone(),
        hooks: sm.app_hooks.clone(),
    });
    Json(answer).into_response()
}

#[derive(Debug, Deserialize)]
pub struct FeedQuery {
    since: Option<u64>,
}

/// `GET /internal/objects/{name}/events?since=N`: an edge's feed of one object.
pub async fn feed_route(
    State((hub, shutdown)): State<(ObjectHub, CancellationToken)>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_without_secret(&hub, &headers) {
        return refused;
    }
    let name = match ObjectName::parse("object name", &name) {
        Ok(name) => name.into_string(),
        Err(e) => return bad_request(e.to_string()),
    };
    if q.since.is_none() {
        // The first state a new watcher gets includes every write acknowledged before
        // it asked (when no leader answers, it gets this origin's state and catches up).
        if let Err(e) = hub.inner.proposer.read_barrier().await {
            tracing::debug!(object = %name, error = %e, "feed starts without a read barrier");
        }
    }
    hub.feed(name, q.since, shutdown).into_response()
}

#[derive(Debug, Deserialize)]
pub struct MessageQuery {
    #[serde(default)]
    relayed: bool,
}

/// `POST /internal/objects/{name}/messages[?relayed=true]`: a send-message broadcast,
/// `{"handler": "…", "args": […]}`, from an edge (relayed to every member) or from a
/// member (delivered here only).
pub async fn message_route(
    State((hub, _)): State<(ObjectHub, CancellationToken)>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<MessageQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = refuse_without_secret(&hub, &headers) {
        return refused;
    }
    let name = match ObjectName::parse("object name", &name) {
        Ok(name) => name.into_string(),
        Err(e) => return bad_request(e.to_string()),
    };
    if body.len() > MAX_MESSAGE_BYTES {
        return bad_request(format!("a broadcast may take at most {MAX_MESSAGE_BYTES} bytes"));
    }
    let data: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("broadcast is not JSON: {e}")),
    };
    if let Err(e) = check_broadcast(&data) {
        return bad_request(e);
    }
    hub.broadcast(name, data, q.relayed);
    StatusCode::ACCEPTED.into_response()
}

/// [`WATCHED_ROUTE`]: the objects with an open feed here.
pub async fn watched_route(State((hub, _)): State<(ObjectHub, CancellationToken)>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_without_secret(&hub, &headers) {
        return refused;
    }
    Json(WatchedAnswer { origin: hub.inner.id, objects: hub.watched() }).into_response()
}

/// The leader's sweep: removes temporary objects nobody has watched for
/// `--temporary-grace` ([`DEFAULT_TEMPORARY_GRACE`](crate::origin::config::DEFAULT_TEMPORARY_GRACE)) (see the module doc). Runs until `shutdown`.
pub async fn sweep_temporary(hub: ObjectHub, grace: Duration, shutdown: CancellationToken) {
    let mut unwatched_since: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leading = hub.inner.raft.metrics().borrow().current_leader == Some(hub.inner.id);
        let temporary: Vec<(String, u64)> = hub
            .inner
            .state
            .read(|sm| sm.objects.iter().filter(|(_, o)| !o.persistent).map(|(k, o)| (k.clone(), o.version)).collect());
        if !leading || temporary.is_empty() {
            unwatched_since.clear();
            continue;
        }
        let mut watched: std::collections::HashSet<String> = hub.watched().into_iter().collect();
        let answers = futures::future::join_all(hub.peers().into_iter().map(|(peer, http)| {
            let hub = hub.clone();
            async move { (peer, hub.watched_at(&http).await) }
        }))
        .await;
        if let Some((peer, _)) = answers.iter().find(|(_, a)| a.is_none()) {
            // A member we cannot hear may serve a watcher: decide nothing this round.
            tracing::debug!(peer, "temporary objects: a member did not say what it watches");
            continue;
        }
        watched.extend(answers.into_iter().flat_map(|(_, a)| a.unwrap_or_default()));
        let now = Instant::now();
        unwatched_since.retain(|name, _| !watched.contains(name));
        for (name, version) in temporary {
            if watched.contains(&name) {
                continue;
            }
            let since = *unwatched_since.entry(name.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            unwatched_since.remove(&name);
            let command = Command::DeleteObject { object: name.clone(), if_version: Some(version) };
            match hub.inner.proposer.write(command).await {
                Ok(SmResponse::Stored) => {
                    tracing::info!(object = %name, "removed a temporary shared object nobody uses")
                }
                Ok(other) => tracing::debug!(object = %name, answer = ?other, "temporary object kept"),
                Err(e) => tracing::debug!(object = %name, error = %e, "could not remove a temporary object"),
            }
        }
    }
}
