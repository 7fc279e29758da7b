//! One RTMP connection's shared objects: turns the client's shared-object messages
//! (use, release, request change, request remove, send message) into subscriptions and
//! Raft writes, and the objects' updates back into RTMP events (use success, change,
//! success for the writer, remove, clear, status, send message).
//!
//! Ordering: a connection's writes and broadcasts go out one at a time, in the order
//! the client sent them. Every subscriber gets an object's committed changes in commit
//! order, with the replicated version (its low 32 bits) in each message; the writer of
//! a change gets `success` in place of `change` for it — or, when its own change
//! reached it through the feed before the commit answer, `change` and then `success`.
//!
//! Authorization: changes, removals and send-message need a write token for the
//! object, passed on the connect URL (`rtmp://edge/app?token=T`); without a fitting one
//! the client gets a `status` event (`SharedObject.Unauthorized` or
//! `SharedObject.Forbidden`) and, for a change, the slot's committed value back.
//! Using (reading) an object needs no token, unless it is named `APP/…` for an app that
//! requires play tokens: then a token allowing reads of it (`SharedObject.Unauthorized`
//! or `SharedObject.Forbidden` otherwise).
//!
//! Limits: [`MAX_OBJECTS_PER_CONNECTION`] objects in use, a value size of
//! `MAX_VALUE_BYTES`, and [`MESSAGE_RATE`] shared-object messages per second
//! (bursts of [`MESSAGE_BURST`]). Past one, the client gets a `status` event with
//! level `error` and, for a refused change, the slot's committed value back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use raftcast_raft::state::{ObjectChange, MAX_VALUE_BYTES};
use raftcast_raft::token::Rights;
use raftcast_raft::value::Value;
use raftcast_raft::{ObjectName, Rejection};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::shared_objects::{SharedObjects, Snapshot, Update, WriteError};
use super::tokens::AuthError;
use crate::rtmp::amf0::Amf0Value;
use crate::rtmp::shared_object::{self, SoEvent, SoMessage};

/// Objects one connection may use at once.
pub const MAX_OBJECTS_PER_CONNECTION: usize = 64;
/// Shared-object messages a connection may send per second, on average…
pub const MESSAGE_RATE: f64 = 50.0;
/// …and in a burst.
pub const MESSAGE_BURST: f64 = 100.0;
/// Updates and write answers queued for the connection; a full queue holds back the
/// forwarding tasks (which then resynchronize from the latest state).
const DELIVERIES: usize = 64;
/// Writes and broadcasts queued behind the one in flight; past this, refused as too fast.
const WRITES: usize = 64;

/// Something for the connection to tell its client.
pub enum Delivery {
    Update {
        name: String,
        update: Arc<Update>,
    },
    /// The client fell behind; this is the whole state now.
    Resync {
        name: String,
        snapshot: Snapshot,
    },
    Written {
        name: String,
        slot: String,
        result: Result<u64, WriteError>,
    },
    BroadcastFailed {
        name: String,
        error: WriteError,
    },
}

enum Job {
    Set { name: ObjectName, slot: ObjectName, value: Value },
    Delete { name: ObjectName, slot: ObjectName },
    Broadcast { name: ObjectName, data: serde_json::Value },
}

struct Used {
    amf3: bool,
    persistent: bool,
    forwarder: JoinHandle<()>,
    /// Whether the first whole state was sent.
    synced: bool,
    /// Last version sent to the client.
    delivered: u64,
    /// Committed versions of this client's writes not yet sent: version → slot.
    acked: BTreeMap<u64, String>,
    /// The object's state as last sent, to put back a refused change.
    mirror: BTreeMap<String, Value>,
}

impl Drop for Used {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// A connection's shared objects.
pub struct ConnObjects {
    shared: SharedObjects,
    used: HashMap<String, Used>,
    /// What to tell the client ([`ConnObjects::delivery`]), made at the first use of
    /// an object: most connections (players, publishers) never use one, and a channel
    /// holds room for a block of deliveries from the start (~3 KiB).
    deliveries: Option<(mpsc::Sender<Delivery>, mpsc::Receiver<Delivery>)>,
    writes: Option<mpsc::Sender<Job>>,
    /// The access token from the connect URL, checked on every write.
    token: Option<String>,
    tokens: f64,
    refilled: Instant,
}

/// A reply: a shared-object message body and whether it goes as type 16.
pub type Reply = (Vec<u8>, bool);

fn status(name: &str, amf3: bool, code: &str, extra: Vec<SoEvent>) -> Reply {
    let mut events = vec![SoEvent::Status { code: code.to_owned(), level: "error".to_owned() }];
    events.extend(extra);
    (shared_object::encode(&SoMessage { name: name.to_owned(), version: 0, persistent: false, events }), amf3)
}

impl ConnObjects {
    pub fn new(shared: SharedObjects) -> Self {
        ConnObjects {
            shared,
            used: HashMap::new(),
            deliveries: None,
            writes: None,
            token: None,
            tokens: MESSAGE_BURST,
            refilled: Instant::now(),
        }
    }

    /// The token the client passed on its connect URL (before any shared-object message).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    fn deliveries_tx(&mut self) -> mpsc::Sender<Delivery> {
        self.deliveries.get_or_insert_with(|| mpsc::channel(DELIVERIES)).0.clone()
    }

    /// The next delivery for the client (never, before an object is used).
    pub async fn next_delivery(&mut self) -> Option<Delivery> {
        match &mut self.deliveries {
            Some((_, rx)) => rx.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Whether anything can arrive from `next_delivery`: an object in use or a write queued
    /// once (the connection does not poll the channel before).
    pub fn active(&self) -> bool {
        !self.used.is_empty() || self.writes.is_some()
    }

    /// Whether the connection uses no object (for its idle timeout).
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * MESSAGE_RATE;
        self.tokens = (self.tokens + earned).min(MESSAGE_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Handles one shared-object message from the client; returns what to answer at
    /// once. An error means the message does not parse: the connection closes.
    pub fn handle(&mut self, body: &[u8], amf3: bool) -> Result<Vec<Reply>, String> {
        let msg = shared_object::decode(body).map_err(|e| format!("invalid shared-object message: {e}"))?;
        let Ok(object) = ObjectName::parse("object name", &msg.name) else {
            return Ok(vec![status(&msg.name, amf3, "SharedObject.BadName", vec![])]);
        };
        let name = msg.name;
        if !self.take_token() {
            let reverts = self.reverts(&name, &msg.events);
            return Ok(vec![status(&name, amf3, "SharedObject.RateLimited", reverts)]);
        }
        let mut replies = Vec::new();
        for event in msg.events {
            match event {
                SoEvent::Use => {
                    if let Some(reply) = self.use_object(&name, msg.persistent, amf3) {
                        replies.push(reply);
                    }
                }
                SoEvent::Release => {
                    self.used.remove(&name);
                }
                SoEvent::RequestChange { key, value } => {
                    if let Some(reply) = self.request_change(&name, key, value, amf3) {
                        replies.push(reply);
                    }
                }
                SoEvent::RequestRemove { key } => {
                    if let Some(reply) = self.request_remove(&name, key, amf3) {
                        replies.push(reply);
                    }
                }
                SoEvent::SendMessage { handler, args } => {
                    if !self.used.contains_key(name.as_str()) {
                        replies.push(status(&name, amf3, "SharedObject.NotInUse", vec![]));
                        continue;
                    }
                    let args: Vec<serde_json::Value> = args.iter().map(|a| amf_to_value(a).to_json()).collect();
                    let data = serde_json::json!({ "handler": handler, "args": args });
                    if data.to_string().len() > MAX_VALUE_BYTES {
                        replies.push(status(&name, amf3, "SharedObject.LimitExceeded", vec![]));
                    } else if !self.enqueue(Job::Broadcast { name: object.clone(), data }) {
                        replies.push(status(&name, amf3, "SharedObject.RateLimited", vec![]));
                    }
                }
                // Server-to-client events have no meaning from a client.
                other => {
                    tracing::debug!(object = %name, event = ?other, "client sent a server's shared-object event");
                    replies.push(status(&name, amf3, "SharedObject.BadEvent", vec![]));
                }
            }
        }
        Ok(replies)
    }

    fn use_object(&mut self, name: &str, persistent: bool, amf3: bool) -> Option<Reply> {
        if self.used.contains_key(name) {
            return None;
        }
        if self.used.len() >= MAX_OBJECTS_PER_CONNECTION {
            return Some(status(name, amf3, "SharedObject.LimitExceeded", vec![]));
        }
        let Ok(object) = ObjectName::parse("object name", name) else {
            return Some(status(name, amf3, "SharedObject.BadName", vec![]));
        };
        if let Err(e) = self.shared.authorize_read(self.token.as_deref(), &object) {
            tracing::debug!(object = %name, error = %e, "shared object use refused");
            return Some(status(name, amf3, error_code(&WriteError::Denied(e)), vec![]));
        }
        let mut sub = match self.shared.subscribe(&object) {
            Ok(sub) => sub,
            Err(e) => {
                tracing::debug!(object = %name, error = %e, "shared object refused");
                return Some(status(name, amf3, "SharedObject.TooManyObjects", vec![]));
            }
        };
        let tx = self.deliveries_tx();
        let owned = name.to_owned();
        let forwarder = tokio::spawn(async move {
            if let Some(snapshot) = sub.initial.take() {
                if tx.send(Delivery::Resync { name: owned.clone(), snapshot }).await.is_err() {
                    return;
                }
            }
            loop {
                let delivery = match sub.updates.recv().await {
                    Ok(update) => Delivery::Update { name: owned.clone(), update },
                    Err(RecvError::Lagged(_)) => match sub.snapshot() {
                        Some(snapshot) => Delivery::Resync { name: owned.clone(), snapshot },
                        None => continue,
                    },
                    Err(RecvError::Closed) => return,
                };
                if tx.send(delivery).await.is_err() {
                    return;
                }
            }
        });
        let used = Used {
            amf3,
            persistent,
            forwarder,
            synced: false,
            delivered: 0,
            acked: BTreeMap::new(),
            mirror: BTreeMap::new(),
        };
        self.used.insert(name.to_owned(), used);
        None
    }

    fn request_change(&mut self, name: &str, key: String, value: Amf0Value, amf3: bool) -> Option<Reply> {
        let Some(used) = self.used.get(name) else {
            return Some(status(name, amf3, "SharedObject.NotInUse", vec![]));
        };
        let revert = || used_revert(used, &key);
        let (Ok(object), Ok(slot)) = (ObjectName::parse("object name", name), ObjectName::parse("slot name", &key))
        else {
            return Some(status(name, amf3, "SharedObject.BadName", revert()));
        };
        let value = amf_to_value(&value);
        if value.encoded_len() > MAX_VALUE_BYTES {
            return Some(status(name, amf3, "SharedObject.LimitExceeded", revert()));
        }
        let reverts = revert();
        if !self.enqueue(Job::Set { name: object, slot, value }) {
            return Some(status(name, amf3, "SharedObject.RateLimited", reverts));
        }
        None
    }

    fn request_remove(&mut self, name: &str, key: String, amf3: bool) -> Option<Reply> {
        let Some(used) = self.used.get(name) else {
            return Some(status(name, amf3, "SharedObject.NotInUse", vec![]));
        };
        let reverts = used_revert(used, &key);
        let (Ok(object), Ok(slot)) = (ObjectName::parse("object name", name), ObjectName::parse("slot name", &key))
        else {
            return Some(status(name, amf3, "SharedObject.BadName", reverts));
        };
        if !self.enqueue(Job::Delete { name: object, slot }) {
            return Some(status(name, amf3, "SharedObject.RateLimited", reverts));
        }
        None
    }

    /// The committed values of the slots `events` tried to change, to undo a refused
    /// request on the client.
    fn reverts(&self, name: &str, events: &[SoEvent]) -> Vec<SoEvent> {
        let Some(used) = self.used.get(name) else { return Vec::new() };
        events
            .iter()
            .flat_map(|e| match e {
                SoEvent::RequestChange { key, .. } | SoEvent::RequestRemove { key } => used_revert(used, key),
                _ => Vec::new(),
            })
            .collect()
    }

    /// Queues a write or broadcast behind the ones in flight; `false` when too many wait.
    fn enqueue(&mut self, job: Job) -> bool {
        if self.writes.is_none() {
            let (tx, rx) = mpsc::channel(WRITES);
            tokio::spawn(writer(self.shared.clone(), rx, self.deliveries_tx(), self.token.clone()));
            self.writes = Some(tx);
        }
        self.writes.as_ref().is_some_and(|writes| writes.try_send(job).is_ok())
    }

    /// Turns a delivery into messages for the client.
    pub fn delivery(&mut self, delivery: Delivery) -> Vec<Reply> {
        match delivery {
            Delivery::Update { name, update } => self.update(&name, &update),
            Delivery::Resync { name, snapshot } => self.update(&name, &Update::Sync(snapshot)),
            Delivery::Written { name, slot, result } => {
                let Some(used) = self.used.get_mut(&name) else { return Vec::new() };
                match result {
                    Ok(version) if version <= used.delivered => {
                        vec![message(&name, used, vec![SoEvent::Success { key: slot }])]
                    }
                    Ok(version) => {
                        used.acked.insert(version, slot);
                        Vec::new()
                    }
                    Err(error) => {
                        let code = error_code(&error);
                        tracing::debug!(object = %name, %slot, %error, "shared-object write refused");
                        let reverts = used_revert(used, &slot);
                        vec![status(&name, used.amf3, code, reverts)]
                    }
                }
            }
            Delivery::BroadcastFailed { name, error } => {
                tracing::debug!(object = %name, %error, "broadcast failed");
                let amf3 = self.used.get(&name).is_some_and(|u| u.amf3);
                vec![status(&name, amf3, error_code(&error), vec![])]
            }
        }
    }

    fn update(&mut self, name: &str, update: &Update) -> Vec<Reply> {
        let Some(used) = self.used.get_mut(name) else { return Vec::new() };
        let events = match update {
            Update::Sync(snapshot) => {
                let mut events = vec![if used.synced { SoEvent::Clear } else { SoEvent::UseSuccess }];
                events.extend(
                    snapshot.slots.iter().map(|(k, v)| SoEvent::Change { key: k.clone(), value: value_to_amf(v) }),
                );
                used.synced = true;
                used.delivered = snapshot.version;
                used.mirror = snapshot.slots.clone();
                used.persistent |= snapshot.persistent;
                // Own writes already contained in this state.
                let done: Vec<u64> = used.acked.range(..=snapshot.version).map(|(v, _)| *v).collect();
                for v in done {
                    if let Some(slot) = used.acked.remove(&v) {
                        events.push(SoEvent::Success { key: slot });
                    }
                }
                events
            }
            Update::Change { version, change } => {
                let removed = matches!(change, ObjectChange::Removed);
                if !used.synced || (!removed && *version <= used.delivered) {
                    return Vec::new();
                }
                used.delivered = *version;
                if removed {
                    used.acked.clear();
                }
                let own = used.acked.remove(version);
                match change {
                    ObjectChange::Set { slots } => slots
                        .iter()
                        .map(|(k, v)| {
                            used.mirror.insert(k.clone(), v.clone());
                            if own.as_deref() == Some(k.as_str()) {
                                SoEvent::Success { key: k.clone() }
                            } else {
                                SoEvent::Change { key: k.clone(), value: value_to_amf(v) }
                            }
                        })
                        .collect(),
                    ObjectChange::Deleted { slot } => {
                        used.mirror.remove(slot);
                        vec![if own.is_some() {
                            SoEvent::Success { key: slot.clone() }
                        } else {
                            SoEvent::Remove { key: slot.clone() }
                        }]
                    }
                    ObjectChange::Cleared | ObjectChange::Removed => {
                        used.mirror.clear();
                        vec![SoEvent::Clear]
                    }
                }
            }
            Update::Message(data) => {
                let handler = data.get("handler").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
                let args = data
                    .get("args")
                    .and_then(serde_json::Value::as_array)
                    .map(|a| a.iter().filter_map(|v| Value::from_json(v).ok()).map(|v| value_to_amf(&v)).collect())
                    .unwrap_or_default();
                vec![SoEvent::SendMessage { handler, args }]
            }
        };
        if events.is_empty() {
            return Vec::new();
        }
        vec![message(name, used, events)]
    }
}

fn message(name: &str, used: &Used, events: Vec<SoEvent>) -> Reply {
    // RTMP carries 32 bits of version; the replicated version is 64.
    let msg = SoMessage { name: name.to_owned(), version: used.delivered as u32, persistent: used.persistent, events };
    (shared_object::encode(&msg), used.amf3)
}

/// The event that puts `key` back to its committed value on the client.
fn used_revert(used: &Used, key: &str) -> Vec<SoEvent> {
    if !used.synced {
        return Vec::new();
    }
    vec![match used.mirror.get(key) {
        Some(v) => SoEvent::Change { key: key.to_owned(), value: value_to_amf(v) },
        None => SoEvent::Remove { key: key.to_owned() },
    }]
}

/// The `status` code a client gets for a failed write or broadcast.
fn error_code(error: &WriteError) -> &'static str {
    match error {
        WriteError::Rejected(Rejection::LimitExceeded { .. }) => "SharedObject.LimitExceeded",
        WriteError::Rejected(Rejection::QuotaExceeded { .. }) => "SharedObject.QuotaExceeded",
        WriteError::Rejected(_) => "SharedObject.Rejected",
        WriteError::Unavailable(_) => "SharedObject.Unavailable",
        WriteError::Overloaded(_) => "SharedObject.Overloaded",
        WriteError::Denied(AuthError::Forbidden { .. }) => "SharedObject.Forbidden",
        WriteError::Denied(_) => "SharedObject.Unauthorized",
    }
}

/// Runs a connection's writes and broadcasts one at a time, in order, each authorized
/// by the connection's token first.
async fn writer(
    shared: SharedObjects,
    mut jobs: mpsc::Receiver<Job>,
    tx: mpsc::Sender<Delivery>,
    token: Option<String>,
) {
    while let Some(job) = jobs.recv().await {
        let object = match &job {
            Job::Set { name, .. } | Job::Delete { name, .. } | Job::Broadcast { name, .. } => name.clone(),
        };
        let claims = shared.authorize(token.as_deref(), &object, Rights::Write).await.map_err(WriteError::Denied);
        let delivery = match (job, claims) {
            (Job::Set { name, slot, value }, claims) => {
                let result = match claims {
                    Ok(claims) => shared.set(&claims, &name, &slot, value, None).await,
                    Err(e) => Err(e),
                };
                Delivery::Written { name: name.into_string(), slot: slot.into_string(), result }
            }
            (Job::Delete { name, slot }, claims) => {
                let result = match claims {
                    Ok(claims) => shared.delete(&claims, &name, &slot, None).await,
                    Err(e) => Err(e),
                };
                Delivery::Written { name: name.into_string(), slot: slot.into_string(), result }
            }
            (Job::Broadcast { name, data }, claims) => {
                let result = match claims {
                    Ok(_) => shared.send_message(&name, &data).await,
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => continue,
                    Err(error) => Delivery::BroadcastFailed { name: name.into_string(), error },
                }
            }
        };
        if tx.send(delivery).await.is_err() {
            return;
        }
    }
}

/// An AMF0 value as a slot value. Object-like values become objects (property order
/// and class names are not kept); references, XML and "unsupported" become null.
pub fn amf_to_value(v: &Amf0Value) -> Value {
    match v {
        Amf0Value::Number(n) => Value::Number(*n),
        Amf0Value::Boolean(b) => Value::Bool(*b),
        Amf0Value::String(s) | Amf0Value::LongString(s) => Value::String(s.clone()),
        Amf0Value::Object(props) | Amf0Value::EcmaArray(props) | Amf0Value::TypedObject { properties: props, .. } => {
            Value::Object(props.iter().map(|(k, v)| (k.clone(), amf_to_value(v))).collect())
        }
        Amf0Value::StrictArray(items) => Value::Array(items.iter().map(amf_to_value).collect()),
        Amf0Value::Date { millis, .. } => Value::Date(*millis),
        Amf0Value::Null
        | Amf0Value::Undefined
        | Amf0Value::Reference(_)
        | Amf0Value::Unsupported
        | Amf0Value::XmlDocument(_) => Value::Null,
    }
}

/// A slot value as AMF0.
pub fn value_to_amf(v: &Value) -> Amf0Value {
    match v {
        Value::Null => Amf0Value::Null,
        Value::Bool(b) => Amf0Value::Boolean(*b),
        Value::Number(n) => Amf0Value::Number(*n),
        Value::String(s) => Amf0Value::String(s.clone()),
        Value::Date(ms) => Amf0Value::Date { millis: *ms, timezone: 0 },
        Value::Array(items) => Amf0Value::StrictArray(items.iter().map(value_to_amf).collect()),
        Value::Object(map) => Amf0Value::Object(map.iter().map(|(k, v)| (k.clone(), value_to_amf(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_writes_get_their_status_codes() {
        assert_eq!(error_code(&WriteError::Overloaded("behind".into())), "SharedObject.Overloaded");
        assert_eq!(error_code(&WriteError::Denied(AuthError::Missing)), "SharedObject.Unauthorized");
        let forbidden = AuthError::Forbidden { object: "a".into(), rights: "writes" };
        assert_eq!(error_code(&WriteError::Denied(forbidden)), "SharedObject.Forbidden");
        let quota = WriteError::Rejected(Rejection::QuotaExceeded { what: "x".into() });
        assert_eq!(error_code(&quota), "SharedObject.QuotaExceeded");
    }

    #[test]
    fn values_convert_both_ways() {
        let amf = Amf0Value::Object(vec![
            ("n".into(), Amf0Value::Number(2.5)),
            ("list".into(), Amf0Value::StrictArray(vec![Amf0Value::Boolean(true), Amf0Value::Null])),
            ("when".into(), Amf0Value::Date { millis: 1e12, timezone: 0 }),
            ("s".into(), Amf0Value::String("x".into())),
        ]);
        let value = amf_to_value(&amf);
        let Value::Object(map) = &value else { panic!() };
        assert_eq!(map["n"], Value::Number(2.5));
        assert_eq!(map["when"], Value::Date(1e12));
        // Objects come back with their properties sorted by name.
        let back = value_to_amf(&value);
        assert_eq!(amf_to_value(&back), value);
    }
}
