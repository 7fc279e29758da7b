//! Shared objects on the edge: one local copy per object some client here uses, kept
//! current by one change feed from one origin, and fanned out to every local subscriber
//! (RTMP connections and HTTP Server-Sent Events) in commit order.
//!
//! - **Feed.** `GET /internal/objects/{name}/events[?since=V]` at one origin: a whole
//!   `state`, then `change`s in commit order and `message` broadcasts, with keep-alives
//!   every second. A feed silent for [`FEED_DEAD`], closed or refused moves to the next
//!   origin with `since` = the local version, so the new origin sends only what is
//!   missing (or a fresh `state` when it cannot tell).
//! - **Writes** go through Raft (`/raft/forward`) and are answered once committed;
//!   the change then arrives on the feed like everyone else's. Every write is a
//!   client's: it carries the verified token's subject and quota (`ClientWrite`), and
//!   the callers authorize it first ([`SharedObjects::authorize`]).
//! - **Broadcasts** (send-message) go to one origin, which relays them to the others;
//!   every feed delivers them. They are not stored.
//! - **Lifetime.** The feed stays open while at least one local client uses the
//!   object; origins count open feeds to decide when a temporary object is unused
//!   (see `origin::shared_objects`). At most [`MAX_EDGE_OBJECTS`] objects (feeds) are
//!   in use at once; past that, new objects are refused ([`TooManyObjects`]) and the
//!   ones in use carry on.
//! - **Names** arrive validated ([`ObjectName`]) and go into origin URLs escaped as
//!   one path segment.
//!
//! Knows nothing of RTMP or HTTP framing: `so_session` and `http` translate.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use raftcast_raft::state::ObjectChange;
use raftcast_raft::token::{Claims, Rights};
use raftcast_raft::value::Value;
use raftcast_raft::{Command, FailKind, ObjectName, Rejection, Response};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use raftcast_raft::command::escape_segment;

use super::control::{Control, ControlError};
use super::tokens::{AuthError, Verifier};
use crate::lease::{Lease, Leases, Released};
use crate::peer::PeerClient;

/// Updates buffered per object for its slowest subscriber; one that falls further
/// behind gets the whole state again instead of the updates it missed.
pub const UPDATE_QUEUE: usize = 256;
/// A feed with no bytes (not even a keep-alive) for this long is dead.
pub const FEED_DEAD: Duration = Duration::from_secs(3);
/// Longest line of a feed; an origin never sends one near this (values are ≤ 64 KiB
/// each, at most 1024 slots).
const MAX_FEED_EVENT: usize = 96 * 1024 * 1024;
/// One attempt to deliver a broadcast to an origin may take this long.
const BROADCAST_TIMEOUT: Duration = Duration::from_secs(1);
/// Most objects in use on one edge at once: each holds one feed (a connection) to an
/// origin. Past it, a subscription to an object not yet in use is refused (HTTP 503,
/// an RTMP status event) and the objects in use keep working.
pub const MAX_EDGE_OBJECTS: usize = 1024;

/// A subscription refused: this edge already uses [`MAX_EDGE_OBJECTS`] objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this edge serves the most shared objects it may ({0}); try again later")]
pub struct TooManyObjects(pub usize);

/// An object's whole state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    pub persistent: bool,
    pub slots: BTreeMap<String, Value>,
}

/// What subscribers of an object receive, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The whole object: first, and again after a resynchronization.
    Sync(Snapshot),
    /// One committed change; `version` 0 with [`ObjectChange::Removed`] when the
    /// object was removed.
    Change { version: u64, change: ObjectChange },
    /// A broadcast: `{"handler": "…", "args": […]}`.
    Message(serde_json::Value),
}

/// Why a write failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    Unavailable(String),
    /// The cluster's admission control refused the write; retry after a second.
    #[error("the cluster is overloaded: {0}")]
    Overloaded(String),
    /// The client's token does not allow it.
    #[error("{0}")]
    Denied(AuthError),
}

/// The edge's shared objects. Cheap to clone.
#[derive(Clone)]
pub struct SharedObjects {
    inner: Arc<Registry>,
}

struct Registry {
    peers: PeerClient,
    origins: Arc<[SocketAddr]>,
    control: Control,
    verifier: Verifier,
    objects: Leases<String, Arc<Object>>,
    /// [`MAX_EDGE_OBJECTS`], smaller in tests.
    max_objects: usize,
    shutdown: CancellationToken,
}

/// One object in use on this edge.
pub struct Object {
    name: String,
    state: Mutex<Local>,
    updates: broadcast::Sender<Arc<Update>>,
    /// Stops the feed when the last local subscriber leaves.
    stop: CancellationToken,
}

impl Released for Arc<Object> {
    /// The last local subscriber left: the feed stops.
    fn released(&self) {
        self.stop.cancel();
    }
}

#[derive(Default)]
struct Local {
    /// The first `state` has arrived.
    known: bool,
    snapshot: Snapshot,
}

/// A local client's use of an object; releases it when dropped.
pub struct Subscription {
    /// The object; the last one dropped stops its feed.
    object: Lease<String, Arc<Object>>,
    /// Updates from the moment of subscribing.
    pub updates: broadcast::Receiver<Arc<Update>>,
    /// The state at that moment, when already known (otherwise a `Sync` comes first).
    pub initial: Option<Snapshot>,
}

impl Subscription {
    /// The object's whole state now, if known: what a subscriber that fell behind
    /// starts again from.
    pub fn snapshot(&self) -> Option<Snapshot> {
        let local = self.object.value().state.lock().unwrap_or_else(|p| p.into_inner());
        local.known.then(|| local.snapshot.clone())
    }
}

impl SharedObjects {
    pub fn new(
        origins: Vec<SocketAddr>,
        peers: PeerClient,
        control: Control,
        verifier: Verifier,
        shutdown: CancellationToken,
    ) -> Self {
        let origins: Arc<[SocketAddr]> = origins.into();
        SharedObjects {
            inner: Arc::new(Registry {
                peers,
                origins,
                control,
                verifier,
                objects: Leases::default(),
                max_objects: MAX_EDGE_OBJECTS,
                shutdown,
            }),
        }
    }

    /// The same registry with at most `n` objects in use (instead of
    /// [`MAX_EDGE_OBJECTS`]); only right after [`new`](Self::new).
    #[cfg(test)]
    pub fn with_max_objects(mut self, n: usize) -> Self {
        if let Some(registry) = Arc::get_mut(&mut self.inner) {
            registry.max_objects = n;
        }
        self
    }

    /// Whether `token` may read `object` (see [`Verifier::authorize_object_read`]), by
    /// the rules as cached: for RTMP, whose `connect` already fetched them.
    pub fn authorize_read(&self, token: Option<&str>, object: &ObjectName) -> Result<(), AuthError> {
        self.inner.verifier.authorize_object_read(token, object.as_str())
    }

    /// [`authorize_read`](Self::authorize_read) after the first fetch of the rules, if
    /// this edge has not made one yet (HTTP requests may be a fresh edge's first).
    pub async fn authorize_read_fetched(&self, token: Option<&str>, object: &ObjectName) -> Result<(), AuthError> {
        self.inner.verifier.fetched_once().await;
        self.authorize_read(token, object)
    }

    /// The claims of `token` when it allows `rights` on `object` (verified locally).
    pub async fn authorize(
        &self,
        token: Option<&str>,
        object: &ObjectName,
        rights: Rights,
    ) -> Result<Claims, AuthError> {
        self.inner.verifier.authorize(token, object.as_str(), rights).await
    }

    /// Objects in use here.
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.inner.objects.len()
    }

    /// Starts using `name` (opening its feed if nobody here uses it yet); refused when
    /// it is not in use yet and [`MAX_EDGE_OBJECTS`] are.
    pub fn subscribe(&self, name: &ObjectName) -> Result<Subscription, TooManyObjects> {
        let name = name.as_str();
        let max = self.inner.max_objects;
        let lease = self.inner.objects.try_acquire(&name.to_owned(), |in_use| {
            if in_use >= max {
                return Err(TooManyObjects(max));
            }
            let (updates, _) = broadcast::channel(UPDATE_QUEUE);
            let object = Arc::new(Object {
                name: name.to_owned(),
                state: Mutex::default(),
                updates,
                stop: self.inner.shutdown.child_token(),
            });
            tokio::spawn(tracing::Instrument::in_current_span(feed(self.inner.clone(), object.clone())));
            Ok(object)
        })?;
        let object = lease.value();
        let local = object.state.lock().unwrap_or_else(|p| p.into_inner());
        let updates = object.updates.subscribe();
        let initial = local.known.then(|| local.snapshot.clone());
        drop(local);
        Ok(Subscription { object: lease, updates, initial })
    }

    /// Sets `slot` of `name` through Raft for the holder of `claims` (only at version
    /// `if_version`, when given); answers the committed version. The object is
    /// persistent only when the token says so.
    pub async fn set(
        &self,
        claims: &Claims,
        name: &ObjectName,
        slot: &ObjectName,
        value: Value,
        if_version: Option<u64>,
    ) -> Result<u64, WriteError> {
        let command = Command::SetSlots {
            object: name.to_string(),
            slots: vec![(slot.to_string(), value)],
            if_version,
            persistent: claims.persistent,
        };
        self.write(claims, command).await
    }

    /// Deletes `slot` of `name` through Raft for the holder of `claims`; answers the
    /// committed version.
    pub async fn delete(
        &self,
        claims: &Claims,
        name: &ObjectName,
        slot: &ObjectName,
        if_version: Option<u64>,
    ) -> Result<u64, WriteError> {
        let command = Command::DeleteSlot { object: name.to_string(), slot: slot.to_string(), if_version };
        self.write(claims, command).await
    }

    async fn write(&self, claims: &Claims, command: Command) -> Result<u64, WriteError> {
        let command =
            Command::ClientWrite { subject: claims.subject.clone(), quota: claims.quota, command: Box::new(command) };
        match self.inner.control.write_command(command).await {
            Ok(Response::ObjectVersion { version }) => Ok(version),
            Ok(Response::Rejected(r)) => Err(WriteError::Rejected(r)),
            Err(ControlError::Failed { kind: FailKind::Overloaded, message }) => Err(WriteError::Overloaded(message)),
            Err(e @ ControlError::Unavailable(_)) => Err(WriteError::Unavailable(e.to_string())),
            // What went wrong inside the cluster is logged, not told to the client.
            other => {
                tracing::warn!(answer = ?other, "shared-object write failed");
                Err(WriteError::Unavailable("the write did not go through; retry".into()))
            }
        }
    }

    /// Broadcasts `{"handler", "args"}` to every subscriber of `name` on every edge,
    /// through the first origin that takes it.
    pub async fn send_message(&self, name: &ObjectName, data: &serde_json::Value) -> Result<(), WriteError> {
        let body = data.to_string();
        let segment = name.url_segment();
        let mut last = String::from("no origin configured");
        for origin in self.inner.origins.iter() {
            let attempt = self
                .inner
                .peers
                .post(self.inner.peers.url(origin, &format!("/internal/objects/{segment}/messages")))
                .timeout(BROADCAST_TIMEOUT)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match attempt {
                Ok(res) if res.status().is_success() => return Ok(()),
                // Origins' addresses are logged, never told to the client.
                Ok(res) if res.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    tracing::info!(%origin, object = %name, "broadcast refused: origin overloaded");
                    return Err(WriteError::Overloaded("the cluster is busy; retry in a second".into()));
                }
                Ok(res) => last = format!("origin {origin} answered {}", res.status()),
                Err(e) => last = format!("origin {origin}: {e}"),
            }
        }
        tracing::warn!(object = %name, last, "broadcast failed on every origin");
        Err(WriteError::Unavailable("no origin took the message; retry".into()))
    }
}

impl Object {
    fn apply(&self, event: FeedEvent) -> Option<u64> {
        let mut local = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let update = match event {
            FeedEvent::State(snapshot) => {
                local.known = true;
                local.snapshot = snapshot.clone();
                Update::Sync(snapshot)
            }
            FeedEvent::Change { version, change } => {
                let removed = matches!(change, ObjectChange::Removed);
                if !local.known || (!removed && version <= local.snapshot.version) {
                    return local.known.then_some(local.snapshot.version);
                }
                let snap = &mut local.snapshot;
                match &change {
                    ObjectChange::Set { slots } => {
                        for (k, v) in slots {
                            snap.slots.insert(k.clone(), v.clone());
                        }
                    }
                    ObjectChange::Deleted { slot } => {
                        snap.slots.remove(slot);
                    }
                    ObjectChange::Cleared => snap.slots.clear(),
                    ObjectChange::Removed => *snap = Snapshot::default(),
                }
                snap.version = version;
                Update::Change { version, change }
            }
            FeedEvent::Message(data) => Update::Message(data),
        };
        // No receiver is fine: every subscriber may have just left.
        let _ = self.updates.send(Arc::new(update));
        local.known.then_some(local.snapshot.version)
    }
}

/// One parsed event of a feed.
#[derive(Debug, PartialEq)]
enum FeedEvent {
    State(Snapshot),
    Change { version: u64, change: ObjectChange },
    Message(serde_json::Value),
}

/// Parses one SSE event (`event:` name and `data:`) of a feed.
fn parse_event(kind: &str, data: &str) -> Result<Option<FeedEvent>, String> {
    let json: serde_json::Value = serde_json::from_str(data).map_err(|e| format!("{kind} event is not JSON: {e}"))?;
    let version = || json.get("version").and_then(serde_json::Value::as_u64).ok_or("no version");
    Ok(Some(match kind {
        "state" => {
            let slots = json.get("slots").and_then(serde_json::Value::as_object).ok_or("state without slots")?;
            let slots = slots
                .iter()
                .map(|(k, v)| Value::from_json(v).map(|v| (k.clone(), v)))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let persistent = json.get("persistent").and_then(serde_json::Value::as_bool).unwrap_or(false);
            FeedEvent::State(Snapshot { version: version()?, persistent, slots })
        }
        "change" => {
            let version = version()?;
            let change = if let Some(set) = json.get("set").and_then(serde_json::Value::as_object) {
                let slots = set
                    .iter()
                    .map(|(k, v)| Value::from_json(v).map(|v| (k.clone(), v)))
                    .collect::<Result<_, _>>()
                    .map_err(|e| e.to_string())?;
                ObjectChange::Set { slots }
            } else if let Some(slot) = json.get("deleted").and_then(serde_json::Value::as_str) {
                ObjectChange::Deleted { slot: slot.to_owned() }
            } else if json.get("cleared").is_some() {
                ObjectChange::Cleared
            } else if json.get("removed").is_some() {
                ObjectChange::Removed
            } else {
                return Err(format!("change event of an unknown kind: {data}"));
            };
            FeedEvent::Change { version, change }
        }
        "message" => FeedEvent::Message(json),
        _ => return Ok(None),
    }))
}

/// Keeps `object`'s feed open at some origin until its last subscriber leaves.
async fn feed(registry: Arc<Registry>, object: Arc<Object>) {
    let n = registry.origins.len().max(1);
    let mut since: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        if object.stop.is_cancelled() || registry.origins.is_empty() {
            return;
        }
        // Start at the leader as this edge last saw it: it applies a change first
        // (a follower learns of the commit with the leader's next message). After a
        // failure, the next origins in turn.
        let at = registry.control.likely_leader() + failures as usize;
        let origin = registry.origins[at % n];
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            _ = object.stop.cancelled() => return,
            outcome = follow(&registry, &object, origin, &mut since) => outcome,
        };
        // A feed that lived a while was not a quick failure: start counting again.
        if started.elapsed() > FEED_DEAD {
            failures = 0;
        }
        failures += 1;
        if let Err(e) = outcome {
            tracing::debug!(object = %object.name, %origin, error = %e, "shared-object feed lost; trying the next origin");
        }
        // A pause after every origin failed in turn (an election, or all down).
        let pause = if failures as usize >= n { Duration::from_millis(300) } else { Duration::from_millis(20) };
        tokio::select! {
            _ = object.stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Follows the feed at `origin` until it fails; `since` tracks the local version.
async fn follow(
    registry: &Registry,
    object: &Object,
    origin: SocketAddr,
    since: &mut Option<u64>,
) -> Result<(), String> {
    let mut url = registry.peers.url(origin, &format!("/internal/objects/{}/events", escape_segment(&object.name)));
    if let Some(v) = since {
        url.push_str(&format!("?since={v}"));
    }
    let res = registry.peers.get(url).send().await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("status {}", res.status()));
    }
    let mut body = res.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut kind = String::new();
    let mut data = String::new();
    loop {
        let chunk = match tokio::time::timeout(FEED_DEAD, body.next()).await {
            Err(_) => return Err(format!("silent for {FEED_DEAD:?}")),
            Ok(None) => return Err("closed".to_owned()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(chunk))) => chunk,
        };
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_FEED_EVENT {
            return Err("an event longer than any valid one".to_owned());
        }
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = std::str::from_utf8(&line).map_err(|_| "a line that is not UTF-8".to_owned())?;
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !data.is_empty() {
                    if let Some(event) = parse_event(&kind, &data)? {
                        if let Some(version) = object.apply(event) {
                            *since = Some(version);
                        }
                    }
                }
                kind.clear();
                data.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // `id:` and `:` keep-alive comments need nothing.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_events_parse() {
        let state = parse_event("state", r#"{"name":"o","version":3,"persistent":true,"slots":{"a":1,"b":"x"}}"#);
        let Ok(Some(FeedEvent::State(s))) = state else { panic!("{state:?}") };
        assert_eq!((s.version, s.persistent, s.slots.len()), (3, true, 2));
        assert_eq!(s.slots["a"], Value::Number(1.0));
        assert_eq!(
            parse_event("change", r#"{"version":4,"set":{"a":2}}"#),
            Ok(Some(FeedEvent::Change {
                version: 4,
                change: ObjectChange::Set { slots: vec![("a".into(), Value::Number(2.0))] }
            }))
        );
        assert_eq!(
            parse_event("change", r#"{"version":5,"deleted":"a"}"#),
            Ok(Some(FeedEvent::Change { version: 5, change: ObjectChange::Deleted { slot: "a".into() } }))
        );
        assert_eq!(
            parse_event("change", r#"{"version":0,"removed":true}"#),
            Ok(Some(FeedEvent::Change { version: 0, change: ObjectChange::Removed }))
        );
        assert!(parse_event("change", r#"{"version":5}"#).is_err());
        assert!(parse_event("state", "not json").is_err());
        assert_eq!(parse_event("other", "{}"), Ok(None));
    }

    #[tokio::test]
    async fn past_the_cap_new_objects_are_refused_and_those_in_use_carry_on() {
        let secret = raftcast_raft::rpc::ClusterSecret::new("a-test-secret-that-is-long-enough").unwrap();
        let peers = PeerClient::new(secret, None);
        let control = Control::new(Vec::new(), peers.clone(), Duration::from_secs(1));
        let verifier = Verifier::new(peers.clone(), Vec::new().into());
        let objects =
            SharedObjects::new(Vec::new(), peers, control, verifier, CancellationToken::new()).with_max_objects(2);
        let name = |s: &str| ObjectName::parse("object name", s).unwrap();
        let a = objects.subscribe(&name("a")).unwrap();
        let _b = objects.subscribe(&name("b")).unwrap();
        assert_eq!(objects.subscribe(&name("c")).err(), Some(TooManyObjects(2)));
        // An object already in use takes more subscribers.
        let _a2 = objects.subscribe(&name("a")).unwrap();
        assert_eq!(objects.in_use(), 2);
        // Once an object is released, a new one fits.
        drop(a);
        assert!(objects.subscribe(&name("c")).is_err(), "a is still used by a2");
        drop(_a2);
        assert!(objects.subscribe(&name("c")).is_ok());
    }

    #[tokio::test]
    async fn the_local_copy_follows_changes_in_order_and_ignores_replays() {
        let (updates, mut rx) = broadcast::channel(16);
        let object = Object { name: "o".into(), state: Mutex::default(), updates, stop: CancellationToken::new() };
        // Changes before the first state are not applied (the state will include them).
        assert_eq!(object.apply(FeedEvent::Change { version: 1, change: ObjectChange::Cleared }), None);
        let mut snap = Snapshot { version: 2, ..Snapshot::default() };
        snap.slots.insert("a".into(), Value::Bool(true));
        assert_eq!(object.apply(FeedEvent::State(snap.clone())), Some(2));
        let set = ObjectChange::Set { slots: vec![("b".into(), Value::Null)] };
        assert_eq!(object.apply(FeedEvent::Change { version: 3, change: set.clone() }), Some(3));
        // A replay from a new origin is ignored.
        assert_eq!(object.apply(FeedEvent::Change { version: 3, change: set.clone() }), Some(3));
        assert_eq!(object.apply(FeedEvent::Change { version: 0, change: ObjectChange::Removed }), Some(0));
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 3, "state, change 3, removed; nothing for the ignored ones");
        assert_eq!(*got[0], Update::Sync(snap));
        assert_eq!(*got[1], Update::Change { version: 3, change: set });
        assert_eq!(*got[2], Update::Change { version: 0, change: ObjectChange::Removed });
    }
}
