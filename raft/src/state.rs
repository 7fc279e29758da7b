//! The replicated state machine: a plain struct and a pure `apply`.
//!
//! `apply` reads no clock and does no I/O; the same log always produces the same state.
//! Every command is idempotent by request id (a retried command gets its first answer
//! back and changes nothing) or guarded by an epoch or version.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::{Command, KeyScope, PinScope, Rejection, Request, RequestId, Response, StreamClaim, StreamKey};
use crate::dedup;
use crate::recording::{OpenPiece, Recordings};
use crate::token::{Quota, TokenKeys, DEFAULT_QUOTA, MAX_TOKEN_KEYS};
use crate::value::Value;
use crate::NodeId;

pub use crate::dedup::DEDUP_WINDOW;

/// Most shared objects the cluster holds; a write that would create one more is refused.
pub const MAX_OBJECTS: usize = 10_000;
/// Most slots one shared object holds.
pub const MAX_SLOTS: usize = 1024;
/// Largest slot value, as [`Value::encoded_len`] counts it.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most objects clients (token holders) may have created together; the rest of
/// [`MAX_OBJECTS`] is the admin's, so no client load can lock the admin out.
pub const MAX_CLIENT_OBJECTS: usize = MAX_OBJECTS * 4 / 5;
/// Most origins draining at once. Clusters have 3 or 5 origins and the leader only
/// accepts members, so this only bounds what a log written by hand could hold.
pub const MAX_DRAINING: usize = 64;

/// An object a client created: who it is charged to and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientObject {
    pub subject: String,
    /// Slots it holds.
    pub slots: u64,
    /// Bytes of its slot names and encoded values.
    pub bytes: u64,
}

/// A token subject's quota (as its latest write presented it) and usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectUsage {
    pub quota: Quota,
    /// Objects it created that still exist.
    pub objects: u64,
    pub slots: u64,
    pub bytes: u64,
}

/// What one slot costs against a quota.
fn slot_bytes(slot: &str, value: &Value) -> u64 {
    (slot.len() + value.encoded_len()) as u64
}

/// A shared object: versioned slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SharedObject {
    /// Bumped once per applied write; 0 means "does not exist".
    pub version: u64,
    /// Persistent objects outlive their subscribers.
    pub persistent: bool,
    pub slots: BTreeMap<String, Value>,
}

/// A committed change, for watchers (SSE, edges). Produced by `apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A stream's claim changed; `None` means released.
    Stream { stream: StreamKey, claim: Option<StreamClaim> },
    /// A shared object changed to `version`.
    Object { object: String, version: u64, change: ObjectChange },
}

/// What a shared-object write did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ObjectChange {
    Set {
        slots: Vec<(String, Value)>,
    },
    Deleted {
        slot: String,
    },
    Cleared,
    /// The whole object is gone (a temporary object nobody uses); its version is 0
    /// again and a later write recreates it at version 1.
    Removed,
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub response: Response,
    /// Changes to announce; empty for rejected or de-duplicated commands.
    pub events: Vec<Event>,
}

/// Everything the origin cluster replicates (besides openraft's membership).
///
/// Snapshots encode this struct with bincode, field by field in declaration order: new
/// fields go at the end, and a snapshot written before a field existed is read through
/// the matching legacy layout ([`StateMachineV5`] … [`StateMachineV1`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateMachine {
    pub streams: BTreeMap<StreamKey, StreamClaim>,
    pub objects: BTreeMap<String, SharedObject>,
    /// Scope → hex SHA-256 of the publish key.
    pub publish_keys: BTreeMap<KeyScope, String>,
    /// Apps that require a publish key.
    pub key_required_apps: BTreeSet<String>,
    /// Answers of recent requests, for idempotent retries. Encoded as two fields, the
    /// answers by id and the ids oldest first, as in every earlier layout.
    recent: dedup::Window<Remembered>,
    /// Pin rules: the streams a scope covers go to this origin (see
    /// [`StateMachine::pin_for`]). Added after format 1's first layout.
    pub pins: BTreeMap<PinScope, NodeId>,
    /// Token signing keys by id (see [`crate::token`]). Added after pins.
    pub token_keys: TokenKeys,
    /// Objects clients created, and who is charged for them.
    pub client_objects: BTreeMap<String, ClientObject>,
    /// Quota and usage per token subject (only subjects owning an object).
    pub subjects: BTreeMap<String, SubjectUsage>,
    /// Apps that require stream tokens, and for what. Added after token keys.
    pub app_tokens: BTreeMap<String, AppTokens>,
    /// Apps' webhooks. Added with app token rules.
    pub app_hooks: BTreeMap<String, AppHooks>,
    /// Origins being drained (`Command::SetDraining`): placement skips them and the
    /// leader moves their streams away. Added after app hooks.
    pub draining: BTreeSet<NodeId>,
    /// Recording rules and the catalog of recordings ([`crate::recording`]). Added
    /// after draining origins.
    pub recordings: Recordings,
}

/// One answer in the de-duplication window, small in memory: nearly every remembered
/// answer is a write's new version, kept in 8 bytes; the others are boxed. A window
/// entry is 32 bytes instead of 96 (a [`Response`] is 72), which matters for a table of
/// up to [`DEDUP_WINDOW`] entries: 4.2 MB instead of 12.6 when full (a heap profile
/// after a write flood put 3 MB under `apply`, mostly this table). Encodes exactly as
/// the [`Response`] it stands for, so snapshots are unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Response", into = "Response")]
enum Remembered {
    ObjectVersion(u64),
    Other(Box<Response>),
}

impl From<Response> for Remembered {
    fn from(response: Response) -> Self {
        match response {
            Response::ObjectVersion { version } => Remembered::ObjectVersion(version),
            other => Remembered::Other(Box::new(other)),
        }
    }
}

impl From<Remembered> for Response {
    fn from(remembered: Remembered) -> Self {
        match remembered {
            Remembered::ObjectVersion(version) => Response::ObjectVersion { version },
            Remembered::Other(response) => *response,
        }
    }
}

/// An app's webhooks: URLs the edges call when a client connects, publishes or plays
/// (their answer admits or refuses it) and when it stops (notices, retried).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHooks {
    pub on_connect: Option<String>,
    pub on_publish: Option<String>,
    pub on_publish_done: Option<String>,
    pub on_play: Option<String>,
    pub on_play_done: Option<String>,
    /// How long one call may take.
    pub timeout_ms: u32,
    /// Whether a client is admitted when its hook cannot be reached or answers late
    /// (otherwise it is refused).
    pub fail_open: bool,
}

/// Which signed stream tokens an app requires (see [`crate::token::StreamClaims`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppTokens {
    pub play: bool,
    pub publish: bool,
}

/// The layout of [`StateMachine`] in snapshots written before recordings.
/// Decoding only; converts into the current state with no rule and no recording.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateMachineV5 {
    streams: BTreeMap<StreamKey, StreamClaim>,
    objects: BTreeMap<String, SharedObject>,
    publish_keys: BTreeMap<KeyScope, String>,
    key_required_apps: BTreeSet<String>,
    recent: dedup::Window<Remembered>,
    pins: BTreeMap<PinScope, NodeId>,
    token_keys: TokenKeys,
    client_objects: BTreeMap<String, ClientObject>,
    subjects: BTreeMap<String, SubjectUsage>,
    app_tokens: BTreeMap<String, AppTokens>,
    app_hooks: BTreeMap<String, AppHooks>,
    draining: BTreeSet<NodeId>,
}

impl From<StateMachineV5> for StateMachine {
    fn from(v5: StateMachineV5) -> Self {
        StateMachine {
            streams: v5.streams,
            objects: v5.objects,
            publish_keys: v5.publish_keys,
            key_required_apps: v5.key_required_apps,
            recent: v5.recent,
            pins: v5.pins,
            token_keys: v5.token_keys,
            client_objects: v5.client_objects,
            subjects: v5.subjects,
            app_tokens: v5.app_tokens,
            app_hooks: v5.app_hooks,
            draining: v5.draining,
            recordings: Recordings::default(),
        }
    }
}

/// The layout of [`StateMachine`] in snapshots written before draining origins.
/// Decoding only; converts into the current state with no origin draining.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateMachineV4 {
    streams: BTreeMap<StreamKey, StreamClaim>,
    objects: BTreeMap<String, SharedObject>,
    publish_keys: BTreeMap<KeyScope, String>,
    key_required_apps: BTreeSet<String>,
    recent: dedup::Window<Remembered>,
    pins: BTreeMap<PinScope, NodeId>,
    token_keys: TokenKeys,
    client_objects: BTreeMap<String, ClientObject>,
    subjects: BTreeMap<String, SubjectUsage>,
    app_tokens: BTreeMap<String, AppTokens>,
    app_hooks: BTreeMap<String, AppHooks>,
}

impl From<StateMachineV4> for StateMachine {
    fn from(v4: StateMachineV4) -> Self {
        StateMachine {
            streams: v4.streams,
            objects: v4.objects,
            publish_keys: v4.publish_keys,
            key_required_apps: v4.key_required_apps,
            recent: v4.recent,
            pins: v4.pins,
            token_keys: v4.token_keys,
            client_objects: v4.client_objects,
            subjects: v4.subjects,
            app_tokens: v4.app_tokens,
            app_hooks: v4.app_hooks,
            draining: BTreeSet::new(),
            recordings: Recordings::default(),
        }
    }
}

/// The layout of [`StateMachine`] in snapshots written before app token rules and hooks.
/// Decoding only; converts into the current state with no rules.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateMachineV3 {
    streams: BTreeMap<StreamKey, StreamClaim>,
    objects: BTreeMap<String, SharedObject>,
    publish_keys: BTreeMap<KeyScope, String>,
    key_required_apps: BTreeSet<String>,
    recent: dedup::Window<Remembered>,
    pins: BTreeMap<PinScope, NodeId>,
    token_keys: TokenKeys,
    client_objects: BTreeMap<String, ClientObject>,
    subjects: BTreeMap<String, SubjectUsage>,
}

impl From<StateMachineV3> for StateMachine {
    fn from(v3: StateMachineV3) -> Self {
        StateMachine {
            streams: v3.streams,
            objects: v3.objects,
            publish_keys: v3.publish_keys,
            key_required_apps: v3.key_required_apps,
            recent: v3.recent,
            pins: v3.pins,
            token_keys: v3.token_keys,
            client_objects: v3.client_objects,
            subjects: v3.subjects,
            app_tokens: BTreeMap::new(),
            app_hooks: BTreeMap::new(),
            draining: BTreeSet::new(),
            recordings: Recordings::default(),
        }
    }
}

/// The layout of [`StateMachine`] in snapshots written before token keys and quotas.
/// Decoding only; converts into the current state with no keys and no client objects.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateMachineV2 {
    streams: BTreeMap<StreamKey, StreamClaim>,
    objects: BTreeMap<String, SharedObject>,
    publish_keys: BTreeMap<KeyScope, String>,
    key_required_apps: BTreeSet<String>,
    recent: dedup::Window<Remembered>,
    pins: BTreeMap<PinScope, NodeId>,
}

impl From<StateMachineV2> for StateMachine {
    fn from(v2: StateMachineV2) -> Self {
        StateMachine {
            streams: v2.streams,
            objects: v2.objects,
            publish_keys: v2.publish_keys,
            key_required_apps: v2.key_required_apps,
            recent: v2.recent,
            pins: v2.pins,
            ..StateMachine::default()
        }
    }
}

/// The layout of [`StateMachine`] in snapshots written before pin rules existed.
/// Decoding only; converts into the current state with no pins.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateMachineV1 {
    streams: BTreeMap<StreamKey, StreamClaim>,
    objects: BTreeMap<String, SharedObject>,
    publish_keys: BTreeMap<KeyScope, String>,
    key_required_apps: BTreeSet<String>,
    recent: dedup::Window<Remembered>,
}

impl From<StateMachineV1> for StateMachine {
    fn from(v1: StateMachineV1) -> Self {
        StateMachine {
            streams: v1.streams,
            objects: v1.objects,
            publish_keys: v1.publish_keys,
            key_required_apps: v1.key_required_apps,
            recent: v1.recent,
            ..StateMachine::default()
        }
    }
}

/// The hex SHA-256 under which a publish key is stored. Keys are random 128-bit
/// secrets, so a plain hash is enough to keep the log free of usable keys.
pub fn hash_publish_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl StateMachine {
    /// Applies the command of the log entry at `index`.
    pub fn apply(&mut self, index: u64, req: &Request) -> Applied {
        if let Some(previous) = self.answered(&req.id) {
            return Applied { response: previous, events: Vec::new() };
        }
        let mut events = Vec::new();
        let response = self.execute(index, req.at_ms, &req.command, &mut events);
        for event in &events {
            if let Event::Object { object, .. } = event {
                self.recount(object);
            }
        }
        // A refusal for quota or limits changed nothing, and executing the command
        // again can only be refused again or applied once: no need to remember it.
        // (Floods of refused writes would otherwise fill the table.)
        if !matches!(response, Response::Rejected(Rejection::QuotaExceeded { .. } | Rejection::LimitExceeded { .. })) {
            self.remember(req.id, response.clone());
        }
        Applied { response, events }
    }

    /// Why `command` would be refused for a quota or a limit if it were applied now, if
    /// it would be: what `apply` decides, asked ahead, so the proposer can refuse a
    /// flood of such writes before they reach the log. `apply` still decides: a delete
    /// committed meanwhile may let through a write this refused (its client retries).
    pub fn refusal_ahead(&self, command: &Command) -> Option<Rejection> {
        match command {
            Command::SetSlots { object, slots, .. } => self.over_limits(object, slots),
            Command::ClientWrite { subject, quota, command } => match &**command {
                Command::SetSlots { object, slots, .. } => {
                    self.over_quota(subject, quota, object, slots).or_else(|| self.over_limits(object, slots))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// The answer already given to request `id`, if it applied within the
    /// de-duplication window: a retry of it would get this answer and change nothing.
    pub fn answered(&self, id: &RequestId) -> Option<Response> {
        self.recent.get(id).map(|r| r.clone().into())
    }

    fn remember(&mut self, id: RequestId, response: Response) {
        self.recent.insert(id, response.into());
    }

    fn execute(&mut self, index: u64, at_ms: u64, command: &Command, events: &mut Vec<Event>) -> Response {
        match command {
            Command::ClaimStream { stream, owner, edge, session, takeover } => {
                if let Some(current) = self.streams.get(stream) {
                    if current.edge == *edge && current.session == *session {
                        return Response::Claimed(current.clone());
                    }
                    if !takeover {
                        return Response::Rejected(Rejection::StreamOwned {
                            owner: current.owner,
                            epoch: current.epoch,
                            edge: current.edge.clone(),
                        });
                    }
                }
                let claim = StreamClaim {
                    owner: *owner,
                    epoch: index,
                    edge: edge.clone(),
                    session: session.clone(),
                    since_ms: at_ms,
                };
                self.streams.insert(stream.clone(), claim.clone());
                events.push(Event::Stream { stream: stream.clone(), claim: Some(claim.clone()) });
                Response::Claimed(claim)
            }
            Command::ReleaseStream { stream, epoch } => match self.streams.get(stream) {
                Some(current) if current.epoch == *epoch => {
                    self.streams.remove(stream);
                    events.push(Event::Stream { stream: stream.clone(), claim: None });
                    Response::Released
                }
                current => Response::Rejected(Rejection::StaleEpoch { current: current.map(|c| c.epoch) }),
            },
            Command::ReassignStream { stream, expected_epoch, owner } => match self.streams.get_mut(stream) {
                Some(current) if current.epoch == *expected_epoch => {
                    current.owner = *owner;
                    current.epoch = index;
                    let claim = current.clone();
                    events.push(Event::Stream { stream: stream.clone(), claim: Some(claim.clone()) });
                    Response::Claimed(claim)
                }
                current => Response::Rejected(Rejection::StaleEpoch { current: current.map(|c| c.epoch) }),
            },
            Command::DropEdgeClaims { edge } => {
                let dropped: Vec<StreamKey> =
                    self.streams.iter().filter(|(_, c)| c.edge == *edge).map(|(k, _)| k.clone()).collect();
                for stream in &dropped {
                    self.streams.remove(stream);
                    events.push(Event::Stream { stream: stream.clone(), claim: None });
                }
                Response::EdgeDropped { streams: dropped }
            }
            Command::SetSlots { object, slots, if_version, persistent } => {
                let current = self.objects.get(object).map_or(0, |o| o.version);
                if let Some(expected) = if_version {
                    if *expected != current {
                        return Response::Rejected(Rejection::VersionMismatch { current });
                    }
                }
                if let Some(refused) = self.over_limits(object, slots) {
                    return Response::Rejected(refused);
                }
                let obj = self.objects.entry(object.clone()).or_default();
                obj.persistent |= *persistent;
                obj.version += 1;
                for (slot, value) in slots {
                    obj.slots.insert(slot.clone(), value.clone());
                }
                events.push(Event::Object {
                    object: object.clone(),
                    version: obj.version,
                    change: crate::state::ObjectChange::Set { slots: slots.clone() },
                });
                Response::ObjectVersion { version: obj.version }
            }
            Command::DeleteSlot { object, slot, if_version } => {
                let obj = match self.existing_at(object, *if_version) {
                    Ok(obj) => obj,
                    Err(r) => return Response::Rejected(r),
                };
                if obj.slots.remove(slot).is_none() {
                    return Response::Rejected(Rejection::NotFound);
                }
                obj.version += 1;
                events.push(Event::Object {
                    object: object.clone(),
                    version: obj.version,
                    change: ObjectChange::Deleted { slot: slot.clone() },
                });
                Response::ObjectVersion { version: obj.version }
            }
            Command::ClearObject { object, if_version } => {
                let obj = match self.existing_at(object, *if_version) {
                    Ok(obj) => obj,
                    Err(r) => return Response::Rejected(r),
                };
                obj.slots.clear();
                obj.version += 1;
                events.push(Event::Object {
                    object: object.clone(),
                    version: obj.version,
                    change: ObjectChange::Cleared,
                });
                Response::ObjectVersion { version: obj.version }
            }
            Command::SetPublishKey { scope, key_hash } => {
                self.publish_keys.insert(scope.clone(), key_hash.clone());
                Response::Stored
            }
            Command::SetAppPolicy { app, publish_key_required } => {
                if *publish_key_required {
                    self.key_required_apps.insert(app.clone());
                } else {
                    self.key_required_apps.remove(app);
                }
                Response::Stored
            }
            Command::SetPin { scope, origin } => {
                self.pins.insert(scope.clone(), *origin);
                Response::Stored
            }
            Command::DeletePin { scope } => match self.pins.remove(scope) {
                Some(_) => Response::Stored,
                None => Response::Rejected(Rejection::NotFound),
            },
            Command::DeleteObject { object, if_version } => {
                if let Err(r) = self.existing_at(object, *if_version) {
                    return Response::Rejected(r);
                }
                self.objects.remove(object);
                events.push(Event::Object { object: object.clone(), version: 0, change: ObjectChange::Removed });
                Response::Stored
            }
            Command::AddTokenKey { key, only_if_none } => {
                if *only_if_none && !self.token_keys.is_empty() {
                    return Response::Stored;
                }
                let id = self.token_keys.keys().next_back().map_or(1, |k| k + 1);
                self.token_keys.insert(id, key.clone());
                while self.token_keys.len() > MAX_TOKEN_KEYS {
                    self.token_keys.pop_first();
                }
                Response::Stored
            }
            Command::SetAppTokens { app, tokens } => {
                if *tokens == AppTokens::default() {
                    self.app_tokens.remove(app);
                } else {
                    self.app_tokens.insert(app.clone(), *tokens);
                }
                Response::Stored
            }
            Command::SetAppHooks { app, hooks } => {
                match hooks {
                    Some(hooks) => self.app_hooks.insert(app.clone(), hooks.clone()),
                    None => self.app_hooks.remove(app),
                };
                Response::Stored
            }
            Command::RetireTokenKeys => {
                while self.token_keys.len() > 1 {
                    self.token_keys.pop_first();
                }
                Response::Stored
            }
            Command::SetDraining { origin, draining: true } => {
                if !self.draining.contains(origin) && self.draining.len() >= MAX_DRAINING {
                    return Response::Rejected(Rejection::LimitExceeded {
                        what: format!("{MAX_DRAINING} origins are draining already; undrain one first"),
                    });
                }
                self.draining.insert(*origin);
                Response::Stored
            }
            Command::SetDraining { origin, draining: false } => {
                self.draining.remove(origin);
                Response::Stored
            }
            Command::SetRecording { scope, record } => self.recordings.set_rule(scope, *record),
            Command::OpenPiece { stream, epoch, owner, edge, session } => self.recordings.open_piece(
                index,
                at_ms,
                OpenPiece { stream, epoch: *epoch, owner: *owner, edge, session },
            ),
            Command::FinishPiece { recording, epoch, facts } => {
                self.recordings.finish_piece(*recording, *epoch, *facts, at_ms)
            }
            Command::AddPieceHolder { recording, epoch, holder } => {
                self.recordings.add_holder(*recording, *epoch, *holder)
            }
            Command::DeleteRecording { recording } => self.recordings.delete(*recording),
            Command::SetRecordingRetention { retention } => {
                self.recordings.retention = *retention;
                Response::Stored
            }
            Command::ClientWrite { subject, quota, command } => match &**command {
                Command::SetSlots { object, slots, .. } => {
                    if let Some(refused) = self.over_quota(subject, quota, object, slots) {
                        return Response::Rejected(refused);
                    }
                    let creating = !self.objects.contains_key(object);
                    let response = self.execute(index, at_ms, command, events);
                    if creating && matches!(response, Response::ObjectVersion { .. }) {
                        let owner = ClientObject { subject: subject.clone(), ..ClientObject::default() };
                        self.client_objects.insert(object.clone(), owner);
                        let usage = self.subjects.entry(subject.clone()).or_insert_with(|| SubjectUsage {
                            quota: *quota,
                            objects: 0,
                            slots: 0,
                            bytes: 0,
                        });
                        usage.objects += 1;
                    }
                    if let Some(usage) = self.subjects.get_mut(subject) {
                        usage.quota = *quota;
                    }
                    response
                }
                Command::DeleteSlot { .. } => self.execute(index, at_ms, command, events),
                _ => Response::Rejected(Rejection::QuotaExceeded {
                    what: "a client may only set or delete slots".to_owned(),
                }),
            },
        }
    }

    /// Why `subject` (presenting `quota`) may not write `slots` into `object`, if it
    /// may not. Objects a client created are charged to that client's subject; objects
    /// the admin created are bounded by the per-object limits only.
    fn over_quota(&self, subject: &str, quota: &Quota, object: &str, slots: &[(String, Value)]) -> Option<Rejection> {
        let refuse = |what: String| Some(Rejection::QuotaExceeded { what });
        let existing = self.objects.get(object);
        let owner = match (existing, self.client_objects.get(object)) {
            (None, _) => {
                if self.client_objects.len() >= MAX_CLIENT_OBJECTS {
                    return refuse(format!("clients hold the most shared objects they may ({MAX_CLIENT_OBJECTS})"));
                }
                let held = self.subjects.get(subject).map_or(0, |u| u.objects);
                if held >= u64::from(quota.objects) {
                    return refuse(format!("{subject:?} holds {held} objects; its quota is {}", quota.objects));
                }
                subject
            }
            (Some(_), Some(owned)) => owned.subject.as_str(),
            (Some(_), None) => return None,
        };
        let (limit, used) = match self.subjects.get(owner) {
            Some(u) if owner == subject => (*quota, (u.slots, u.bytes)),
            Some(u) => (u.quota, (u.slots, u.bytes)),
            None => (if owner == subject { *quota } else { DEFAULT_QUOTA }, (0, 0)),
        };
        let (mut new_slots, mut grown) = (0u64, 0i64);
        for (slot, value) in slots {
            let old = existing.and_then(|o| o.slots.get(slot));
            if old.is_none() {
                new_slots += 1;
            }
            grown += slot_bytes(slot, value) as i64 - old.map_or(0, |v| slot_bytes(slot, v) as i64);
        }
        if used.0 + new_slots > u64::from(limit.slots) {
            return refuse(format!("{owner:?} would hold {} slots; its quota is {}", used.0 + new_slots, limit.slots));
        }
        let bytes = used.1.saturating_add_signed(grown);
        if grown > 0 && bytes > limit.bytes {
            return refuse(format!("{owner:?} would hold {bytes} bytes; its quota is {}", limit.bytes));
        }
        None
    }

    /// Brings the usage charged for `object` (if a client created it) up to date after
    /// a change to it, whoever made it.
    fn recount(&mut self, object: &str) {
        let Some(owned) = self.client_objects.get_mut(object) else { return };
        let now = self
            .objects
            .get(object)
            .map(|o| (o.slots.len() as u64, o.slots.iter().map(|(k, v)| slot_bytes(k, v)).sum::<u64>()));
        let (slots, bytes) = now.unwrap_or((0, 0));
        let subject = owned.subject.clone();
        let (old_slots, old_bytes) = (owned.slots, owned.bytes);
        owned.slots = slots;
        owned.bytes = bytes;
        if now.is_none() {
            self.client_objects.remove(object);
        }
        if let Some(usage) = self.subjects.get_mut(&subject) {
            usage.slots = usage.slots.saturating_sub(old_slots) + slots;
            usage.bytes = usage.bytes.saturating_sub(old_bytes) + bytes;
            if now.is_none() {
                usage.objects = usage.objects.saturating_sub(1);
                if usage.objects == 0 {
                    self.subjects.remove(&subject);
                }
            }
        }
    }

    /// `object`, if it exists and (when `if_version` is given) is at that version.
    fn existing_at(&mut self, object: &str, if_version: Option<u64>) -> Result<&mut SharedObject, Rejection> {
        let obj = self.objects.get_mut(object).ok_or(Rejection::NotFound)?;
        match if_version {
            Some(expected) if expected != obj.version => Err(Rejection::VersionMismatch { current: obj.version }),
            _ => Ok(obj),
        }
    }

    /// Why writing `slots` into `object` would break a limit, if it would.
    fn over_limits(&self, object: &str, slots: &[(String, Value)]) -> Option<Rejection> {
        let limit = |what: String| Some(Rejection::LimitExceeded { what });
        if let Some((slot, value)) = slots.iter().find(|(_, v)| v.encoded_len() > MAX_VALUE_BYTES) {
            return limit(format!(
                "slot {slot:?} would take {} bytes; a value may take at most {MAX_VALUE_BYTES}",
                value.encoded_len()
            ));
        }
        let existing = self.objects.get(object);
        if existing.is_none() && self.objects.len() >= MAX_OBJECTS {
            return limit(format!("the cluster holds the most shared objects it may ({MAX_OBJECTS})"));
        }
        let held = existing.map(|o| &o.slots);
        let mut new: Vec<&str> =
            slots.iter().map(|(k, _)| k.as_str()).filter(|k| held.is_none_or(|h| !h.contains_key(*k))).collect();
        new.sort_unstable();
        new.dedup();
        let count = held.map_or(0, BTreeMap::len) + new.len();
        if count > MAX_SLOTS {
            return limit(format!(
                "object {object:?} would hold {count} slots; an object may hold at most {MAX_SLOTS}"
            ));
        }
        None
    }

    /// The pin rule that decides where `stream` goes, if any covers it: the most
    /// specific one ([`PinScope::specificity`]); between equally specific globs, the
    /// one whose pattern sorts first, so the choice never depends on insertion order.
    pub fn pin_for(&self, stream: &StreamKey) -> Option<(&PinScope, NodeId)> {
        let from = PinScope { app: stream.app.clone(), pattern: String::new() };
        self.pins
            .range(from..)
            .take_while(|(scope, _)| scope.app == stream.app)
            .filter(|(scope, _)| scope.covers(stream))
            .max_by(|(a, _), (b, _)| a.specificity().cmp(&b.specificity()).then_with(|| b.pattern.cmp(&a.pattern)))
            .map(|(scope, origin)| (scope, *origin))
    }

    /// Whether `key` may publish `stream`: always when its app is open, otherwise when
    /// it matches the stream's key or the app's key.
    pub fn publish_allowed(&self, stream: &StreamKey, key: Option<&str>) -> bool {
        if !self.key_required_apps.contains(&stream.app) {
            return true;
        }
        let Some(key) = key else { return false };
        let hash = hash_publish_key(key);
        [KeyScope::Stream(stream.clone()), KeyScope::App(stream.app.clone())]
            .iter()
            .any(|scope| self.publish_keys.get(scope) == Some(&hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque};

    fn req(id: u128, command: Command) -> Request {
        Request { id: RequestId(id), at_ms: 1_000 + id as u64, command }
    }

    fn foo() -> StreamKey {
        StreamKey::new("live", "foo").unwrap()
    }

    fn claim(edge: &str, session: &str, owner: u64, takeover: bool) -> Command {
        Command::ClaimStream { stream: foo(), owner, edge: edge.into(), session: session.into(), takeover }
    }

    fn set(object: &str, slot: &str, v: f64, if_version: Option<u64>) -> Command {
        Command::SetSlots {
            object: object.into(),
            slots: vec![(slot.into(), Value::Number(v))],
            if_version,
            persistent: true,
        }
    }

    #[test]
    fn claim_epoch_is_the_log_index_and_time_comes_from_the_command() {
        let mut sm = StateMachine::default();
        let out = sm.apply(7, &req(1, claim("edge-1", "s1", 2, false)));
        let Response::Claimed(c) = out.response else { panic!("{out:?}") };
        assert_eq!((c.epoch, c.owner, c.since_ms), (7, 2, 1_001));
        assert_eq!(out.events.len(), 1);
    }

    #[test]
    fn a_second_publisher_is_refused_unless_it_takes_over() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, claim("edge-1", "s1", 1, false)));
        let out = sm.apply(2, &req(2, claim("edge-2", "s2", 2, false)));
        assert_eq!(
            out.response,
            Response::Rejected(Rejection::StreamOwned { owner: 1, epoch: 1, edge: "edge-1".into() })
        );
        assert!(out.events.is_empty());
        let out = sm.apply(3, &req(3, claim("edge-2", "s2", 2, true)));
        assert!(matches!(out.response, Response::Claimed(StreamClaim { epoch: 3, owner: 2, .. })));
    }

    #[test]
    fn the_same_session_reclaiming_keeps_its_epoch() {
        let mut sm = StateMachine::default();
        sm.apply(4, &req(1, claim("edge-1", "s1", 1, false)));
        let out = sm.apply(9, &req(2, claim("edge-1", "s1", 3, false)));
        assert!(matches!(out.response, Response::Claimed(StreamClaim { epoch: 4, owner: 1, .. })));
    }

    #[test]
    fn a_stale_epoch_never_wins() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, claim("edge-1", "s1", 1, false)));
        // Re-assign from epoch 1 to origin 2: new epoch 5.
        let out = sm.apply(5, &req(2, Command::ReassignStream { stream: foo(), expected_epoch: 1, owner: 2 }));
        assert!(matches!(out.response, Response::Claimed(StreamClaim { epoch: 5, owner: 2, .. })));
        // A second re-assignment that still believes in epoch 1 loses.
        let out = sm.apply(6, &req(3, Command::ReassignStream { stream: foo(), expected_epoch: 1, owner: 3 }));
        assert_eq!(out.response, Response::Rejected(Rejection::StaleEpoch { current: Some(5) }));
        // So does a release under the old epoch.
        let out = sm.apply(7, &req(4, Command::ReleaseStream { stream: foo(), epoch: 1 }));
        assert_eq!(out.response, Response::Rejected(Rejection::StaleEpoch { current: Some(5) }));
        assert_eq!(sm.streams[&foo()].owner, 2);
        // The current epoch releases.
        let out = sm.apply(8, &req(5, Command::ReleaseStream { stream: foo(), epoch: 5 }));
        assert_eq!(out.response, Response::Released);
        assert!(sm.streams.is_empty());
        // Nothing to re-assign any more.
        let out = sm.apply(9, &req(6, Command::ReassignStream { stream: foo(), expected_epoch: 5, owner: 1 }));
        assert_eq!(out.response, Response::Rejected(Rejection::StaleEpoch { current: None }));
    }

    #[test]
    fn answers_of_applied_requests_are_remembered_for_retries() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, claim("edge-1", "s1", 1, false)));
        let moved = sm.apply(4, &req(2, Command::ReassignStream { stream: foo(), expected_epoch: 1, owner: 3 }));
        assert_eq!(sm.answered(&RequestId(2)), Some(moved.response.clone()));
        assert_eq!(sm.answered(&RequestId(9)), None);
        // The retry gets the same answer although the epoch it names is stale now.
        let retry = sm.apply(6, &req(2, Command::ReassignStream { stream: foo(), expected_epoch: 1, owner: 2 }));
        assert_eq!(retry.response, moved.response);
        assert_eq!(sm.streams[&foo()].owner, 3);
    }

    #[test]
    fn dropping_an_edge_releases_only_its_claims() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, claim("edge-1", "s1", 1, false)));
        let bar = StreamKey::new("live", "bar").unwrap();
        let c = Command::ClaimStream {
            stream: bar.clone(),
            owner: 1,
            edge: "edge-2".into(),
            session: "x".into(),
            takeover: false,
        };
        sm.apply(2, &req(2, c));
        let out = sm.apply(3, &req(3, Command::DropEdgeClaims { edge: "edge-1".into() }));
        assert_eq!(out.response, Response::EdgeDropped { streams: vec![foo()] });
        assert_eq!(sm.streams.keys().collect::<Vec<_>>(), vec![&bar]);
    }

    #[test]
    fn conditional_writes_apply_only_at_the_expected_version() {
        let mut sm = StateMachine::default();
        // Version 0 means "absent": create-if-absent.
        assert_eq!(
            sm.apply(1, &req(1, set("chat", "a", 1.0, Some(0)))).response,
            Response::ObjectVersion { version: 1 }
        );
        assert_eq!(
            sm.apply(2, &req(2, set("chat", "a", 2.0, Some(0)))).response,
            Response::Rejected(Rejection::VersionMismatch { current: 1 })
        );
        assert_eq!(
            sm.apply(3, &req(3, set("chat", "a", 3.0, Some(1)))).response,
            Response::ObjectVersion { version: 2 }
        );
        assert_eq!(sm.objects["chat"].slots["a"], Value::Number(3.0));
        let del = Command::DeleteSlot { object: "chat".into(), slot: "a".into(), if_version: Some(1) };
        assert_eq!(sm.apply(4, &req(4, del)).response, Response::Rejected(Rejection::VersionMismatch { current: 2 }));
        let del = Command::DeleteSlot { object: "chat".into(), slot: "a".into(), if_version: Some(2) };
        assert_eq!(sm.apply(5, &req(5, del)).response, Response::ObjectVersion { version: 3 });
        let del = Command::DeleteSlot { object: "chat".into(), slot: "a".into(), if_version: None };
        assert_eq!(sm.apply(6, &req(6, del)).response, Response::Rejected(Rejection::NotFound));
        // Unconditional writes always apply.
        assert_eq!(sm.apply(7, &req(7, set("chat", "b", 1.0, None))).response, Response::ObjectVersion { version: 4 });
        let clear = Command::ClearObject { object: "chat".into(), if_version: None };
        assert_eq!(sm.apply(8, &req(8, clear)).response, Response::ObjectVersion { version: 5 });
        assert!(sm.objects["chat"].slots.is_empty());
    }

    #[test]
    fn a_retried_command_answers_the_same_and_changes_nothing_twice() {
        let mut sm = StateMachine::default();
        let write = req(42, set("chat", "a", 1.0, Some(0)));
        let first = sm.apply(1, &write);
        assert_eq!(first.response, Response::ObjectVersion { version: 1 });
        let after_first = sm.clone();
        // The same request id at a later index (a retry after a lost answer): same
        // answer, no second version bump, no event — although as a fresh command the
        // condition would now fail.
        let retry = sm.apply(2, &write);
        assert_eq!(retry.response, first.response);
        assert!(retry.events.is_empty());
        assert_eq!(sm, after_first);

        let c = req(43, claim("edge-1", "s1", 1, false));
        let first = sm.apply(3, &c);
        sm.apply(4, &req(44, Command::ReleaseStream { stream: foo(), epoch: 3 }));
        // A retried claim after the release must not resurrect it.
        assert_eq!(sm.apply(5, &c).response, first.response);
        assert!(sm.streams.is_empty());
    }

    #[test]
    fn only_non_ownership_commands_share_a_log_entry() {
        assert!(set("o", "s", 1.0, None).batchable());
        assert!(Command::SetAppPolicy { app: "a".into(), publish_key_required: true }.batchable());
        assert!(!claim("e", "s", 1, false).batchable());
        assert!(!Command::ReleaseStream { stream: foo(), epoch: 1 }.batchable());
        assert!(!Command::ReassignStream { stream: foo(), expected_epoch: 1, owner: 2 }.batchable());
        assert!(!Command::DropEdgeClaims { edge: "e".into() }.batchable());
    }

    #[test]
    fn the_dedup_window_is_bounded() {
        let mut sm = StateMachine::default();
        for i in 0..(DEDUP_WINDOW as u128 + 10) {
            sm.apply(i as u64 + 1, &req(i, set("o", "s", i as f64, None)));
        }
        assert_eq!(sm.recent.len(), DEDUP_WINDOW);
        assert!(sm.answered(&RequestId(9)).is_none(), "the oldest were forgotten");
        assert!(sm.answered(&RequestId(DEDUP_WINDOW as u128 + 9)).is_some());
    }

    #[test]
    fn remembered_answers_are_small_and_encode_as_the_answer() {
        use crate::rpc::{decode, encode};
        assert_eq!(std::mem::size_of::<Remembered>(), 16);
        let claim = StreamClaim { owner: 2, epoch: 7, edge: "edge-1".into(), session: "s".into(), since_ms: 1 };
        for response in [
            Response::ObjectVersion { version: 300 },
            Response::Claimed(claim),
            Response::Rejected(Rejection::VersionMismatch { current: 4 }),
            Response::Released,
        ] {
            let remembered = Remembered::from(response.clone());
            assert_eq!(encode(&remembered), encode(&response));
            assert_eq!(decode::<Remembered>(&encode(&response)).unwrap(), remembered);
            assert_eq!(Response::from(remembered), response);
        }
        // A state whose window holds answers encodes as one that held them whole.
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, set("o", "s", 1.0, None)));
        let old: HashMap<RequestId, Response> = sm.recent.iter().map(|(k, v)| (*k, v.clone().into())).collect();
        let order: VecDeque<RequestId> = sm.recent.iter().map(|(k, _)| *k).collect();
        assert_eq!(encode(&sm.recent), encode(&(old, order)));
        assert_eq!(decode::<StateMachine>(&encode(&sm)).unwrap(), sm);
    }

    #[test]
    fn publish_keys_are_checked_by_hash_for_apps_that_require_them() {
        let mut sm = StateMachine::default();
        let stream = foo();
        assert!(sm.publish_allowed(&stream, None), "apps are open by default");
        sm.apply(1, &req(1, Command::SetAppPolicy { app: "live".into(), publish_key_required: true }));
        assert!(!sm.publish_allowed(&stream, None));
        let scope = KeyScope::Stream(stream.clone());
        sm.apply(2, &req(2, Command::SetPublishKey { scope, key_hash: hash_publish_key("s3cret") }));
        assert!(sm.publish_allowed(&stream, Some("s3cret")));
        assert!(!sm.publish_allowed(&stream, Some("guess")));
        assert!(!sm.publish_keys.values().any(|h| h.contains("s3cret")));
        let other = StreamKey::new("live", "other").unwrap();
        assert!(!sm.publish_allowed(&other, Some("s3cret")), "a stream key does not open the app");
        sm.apply(
            3,
            &req(
                3,
                Command::SetPublishKey { scope: KeyScope::App("live".into()), key_hash: hash_publish_key("appkey") },
            ),
        );
        assert!(sm.publish_allowed(&other, Some("appkey")));
    }

    fn pin(app: &str, pattern: &str, origin: u64) -> Command {
        Command::SetPin { scope: PinScope::new(app, pattern).unwrap(), origin }
    }

    fn pinned_to(sm: &StateMachine, app: &str, name: &str) -> Option<u64> {
        sm.pin_for(&StreamKey::new(app, name).unwrap()).map(|(_, origin)| origin)
    }

    #[test]
    fn pin_rules_are_set_replaced_and_deleted() {
        let mut sm = StateMachine::default();
        assert_eq!(sm.apply(1, &req(1, pin("live", "vip-*", 3))).response, Response::Stored);
        assert_eq!(pinned_to(&sm, "live", "vip-anna"), Some(3));
        // The same scope again replaces the origin.
        assert_eq!(sm.apply(2, &req(2, pin("live", "vip-*", 2))).response, Response::Stored);
        assert_eq!(sm.pins.len(), 1);
        assert_eq!(pinned_to(&sm, "live", "vip-anna"), Some(2));
        let scope = PinScope::new("live", "vip-*").unwrap();
        let del = Command::DeletePin { scope: scope.clone() };
        assert_eq!(sm.apply(3, &req(3, del.clone())).response, Response::Stored);
        assert_eq!(pinned_to(&sm, "live", "vip-anna"), None);
        assert_eq!(sm.apply(4, &req(4, del)).response, Response::Rejected(Rejection::NotFound));
        assert!(sm.pins.is_empty());
    }

    #[test]
    fn the_most_specific_pin_wins() {
        let mut sm = StateMachine::default();
        for (i, (pattern, origin)) in
            [("*", 1), ("vip-*", 2), ("vip-*-hd", 3), ("vip-anna", 4), ("*-hd", 5), ("vip*", 6)].into_iter().enumerate()
        {
            sm.apply(i as u64 + 1, &req(i as u128 + 1, pin("live", pattern, origin)));
        }
        // An exact name beats every glob.
        assert_eq!(pinned_to(&sm, "live", "vip-anna"), Some(4));
        // Among globs, more literal characters win: "vip-*-hd" (7) over "vip-*" (4).
        assert_eq!(pinned_to(&sm, "live", "vip-bob-hd"), Some(3));
        assert_eq!(pinned_to(&sm, "live", "vip-bob"), Some(2));
        // "vip*" (3 literals) loses to "vip-*" but catches what "vip-*" does not.
        assert_eq!(pinned_to(&sm, "live", "vipbob"), Some(6));
        assert_eq!(pinned_to(&sm, "live", "news-hd"), Some(5));
        assert_eq!(pinned_to(&sm, "live", "news"), Some(1), "the catch-all");
        // Rules are per app.
        assert_eq!(pinned_to(&sm, "other", "vip-anna"), None);
        assert_eq!(pinned_to(&sm, "liv", "vip-anna"), None);
        assert_eq!(pinned_to(&sm, "live2", "vip-anna"), None);
    }

    #[test]
    fn equally_specific_globs_are_decided_by_pattern_order_not_insertion() {
        for order in [["a*", "*a"], ["*a", "a*"]] {
            let mut sm = StateMachine::default();
            for (i, pattern) in order.iter().enumerate() {
                let origin = if *pattern == "a*" { 1 } else { 2 };
                sm.apply(i as u64 + 1, &req(i as u128 + 1, pin("live", pattern, origin)));
            }
            // "*a" sorts before "a*".
            assert_eq!(pinned_to(&sm, "live", "aba"), Some(2), "{order:?}");
        }
    }

    #[test]
    fn globs_match_any_run_of_characters() {
        let covers = |pattern: &str, name: &str| {
            PinScope::new("live", pattern).unwrap().covers(&StreamKey::new("live", name).unwrap())
        };
        assert!(covers("vip-*", "vip-"));
        assert!(covers("vip-*", "vip-x"));
        assert!(!covers("vip-*", "vip"));
        assert!(!covers("vip-*", "xvip-a"));
        assert!(covers("*", "anything"));
        assert!(covers("a*b*c", "aXXbYYc"));
        assert!(covers("a*b*c", "abc"));
        assert!(!covers("a*b*c", "acb"));
        assert!(covers("*ab", "aab"), "backtracking past a partial match");
        assert!(covers("a**b", "ab"));
        assert!(!covers("exact", "exactly"));
        assert!(covers("exact", "exact"));
        // The worst case stays fast (and terminates).
        let name = "a".repeat(128);
        assert!(!covers(&format!("{}b", "*a".repeat(60)), &name));
    }

    #[test]
    fn pin_patterns_are_validated() {
        assert!(PinScope::new("live", "vip-*").is_ok());
        assert!(PinScope::new("live", "*").is_ok());
        assert!(matches!(PinScope::new("live", ""), Err(crate::command::NameError::Empty(_))));
        assert!(matches!(PinScope::new("live", "a/b"), Err(crate::command::NameError::BadPatternChar(_))));
        assert!(matches!(PinScope::new("live", "a?"), Err(crate::command::NameError::BadPatternChar(_))));
        assert!(PinScope::new("live", &"*".repeat(129)).is_err());
        assert!(PinScope::new("li*e", "x").is_err(), "the app is exact");
    }

    #[test]
    fn a_snapshot_from_before_pins_decodes_with_no_pins() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, claim("edge-1", "s1", 2, false)));
        sm.apply(2, &req(2, set("chat", "a", 1.0, None)));
        // The old layout is the new one without the trailing (empty) maps — pins, token
        // keys, client objects, subjects, app token rules, hooks, draining origins —
        // each encoded as its length: one zero byte.
        let mut bytes = crate::rpc::encode(&sm);
        for _ in 0..11 {
            assert_eq!(bytes.pop(), Some(0));
        }
        let old: StateMachineV1 = crate::rpc::decode(&bytes).unwrap();
        assert_eq!(StateMachine::from(old), sm);
        // The new layout does not decode from old bytes (so a reader can tell them apart).
        assert!(crate::rpc::decode::<StateMachine>(&bytes).is_err());
        // Pins survive an encode/decode round trip.
        sm.apply(3, &req(3, pin("live", "vip-*", 3)));
        let back: StateMachine = crate::rpc::decode(&crate::rpc::encode(&sm)).unwrap();
        assert_eq!(back, sm);
        assert_eq!(pinned_to(&back, "live", "vip-1"), Some(3));
    }

    #[test]
    fn pin_commands_share_log_entries() {
        assert!(pin("live", "x", 1).batchable());
        assert!(Command::DeletePin { scope: PinScope::new("live", "x").unwrap() }.batchable());
    }

    fn client(subject: &str, quota: Quota, command: Command) -> Command {
        Command::ClientWrite { subject: subject.into(), quota, command: Box::new(command) }
    }

    fn temp_set(object: &str, slot: &str, value: Value) -> Command {
        Command::SetSlots {
            object: object.into(),
            slots: vec![(slot.into(), value)],
            if_version: None,
            persistent: false,
        }
    }

    #[test]
    fn a_snapshot_from_before_token_keys_decodes_without_them() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, pin("live", "vip-*", 3)));
        let mut bytes = crate::rpc::encode(&sm);
        for _ in 0..10 {
            assert_eq!(bytes.pop(), Some(0));
        }
        let old: StateMachineV2 = crate::rpc::decode(&bytes).unwrap();
        assert_eq!(StateMachine::from(old), sm);
        assert!(crate::rpc::decode::<StateMachine>(&bytes).is_err());
        // Keys and usage survive a round trip.
        sm.apply(2, &req(2, Command::AddTokenKey { key: crate::token::TokenKey([1; 32]), only_if_none: false }));
        sm.apply(3, &req(3, client("alice", DEFAULT_QUOTA, temp_set("o", "a", Value::Null))));
        let back: StateMachine = crate::rpc::decode(&crate::rpc::encode(&sm)).unwrap();
        assert_eq!(back, sm);
        assert_eq!(back.subjects["alice"].objects, 1);
    }

    #[test]
    fn a_snapshot_from_before_app_rules_decodes_without_them() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, Command::AddTokenKey { key: crate::token::TokenKey([1; 32]), only_if_none: false }));
        let mut bytes = crate::rpc::encode(&sm);
        for _ in 0..7 {
            assert_eq!(bytes.pop(), Some(0));
        }
        let old: StateMachineV3 = crate::rpc::decode(&bytes).unwrap();
        assert_eq!(StateMachine::from(old), sm);
        assert!(crate::rpc::decode::<StateMachine>(&bytes).is_err());
        let tokens = AppTokens { play: true, publish: false };
        sm.apply(2, &req(2, Command::SetAppTokens { app: "live".into(), tokens }));
        let back: StateMachine = crate::rpc::decode(&crate::rpc::encode(&sm)).unwrap();
        assert_eq!(back.app_tokens["live"], tokens);
        sm.apply(3, &req(3, Command::SetAppTokens { app: "live".into(), tokens: AppTokens::default() }));
        assert!(sm.app_tokens.is_empty(), "a rule requiring nothing is removed");
        let hooks =
            AppHooks { on_publish: Some("http://127.0.0.1:9/p".into()), timeout_ms: 500, ..AppHooks::default() };
        sm.apply(4, &req(4, Command::SetAppHooks { app: "live".into(), hooks: Some(hooks.clone()) }));
        let back: StateMachine = crate::rpc::decode(&crate::rpc::encode(&sm)).unwrap();
        assert_eq!(back.app_hooks["live"], hooks);
        sm.apply(5, &req(5, Command::SetAppHooks { app: "live".into(), hooks: None }));
        assert!(sm.app_hooks.is_empty());
    }

    #[test]
    fn a_snapshot_from_before_draining_decodes_with_no_origin_draining() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, claim("edge-1", "s1", 2, false)));
        let hooks = AppHooks { on_play: Some("http://127.0.0.1:9/p".into()), ..AppHooks::default() };
        sm.apply(2, &req(2, Command::SetAppHooks { app: "live".into(), hooks: Some(hooks) }));
        // The V4 layout is the current one without the trailing empty draining set (and
        // the empty recording rules and catalog after it).
        let mut bytes = crate::rpc::encode(&sm);
        for _ in 0..5 {
            assert_eq!(bytes.pop(), Some(0));
        }
        let old: StateMachineV4 = crate::rpc::decode(&bytes).unwrap();
        assert_eq!(StateMachine::from(old), sm);
        assert!(crate::rpc::decode::<StateMachine>(&bytes).is_err());
        // The draining set survives a round trip.
        sm.apply(3, &req(3, Command::SetDraining { origin: 3, draining: true }));
        let back: StateMachine = crate::rpc::decode(&crate::rpc::encode(&sm)).unwrap();
        assert_eq!(back.draining, BTreeSet::from([3]));
        assert_eq!(back, sm);
    }

    #[test]
    fn a_snapshot_from_before_recordings_decodes_with_none() {
        let mut sm = StateMachine::default();
        sm.apply(1, &req(1, Command::SetDraining { origin: 3, draining: true }));
        // The V5 layout is the current one without the recordings: two empty maps and
        // a retention of two `None`s, one zero byte each.
        let mut bytes = crate::rpc::encode(&sm);
        for _ in 0..4 {
            assert_eq!(bytes.pop(), Some(0));
        }
        let old: StateMachineV5 = crate::rpc::decode(&bytes).unwrap();
        assert_eq!(StateMachine::from(old), sm);
        assert!(crate::rpc::decode::<StateMachine>(&bytes).is_err());
        // Rules and the catalog survive a round trip.
        let rule = Command::SetRecording { scope: KeyScope::App("live".into()), record: Some(true) };
        assert_eq!(sm.apply(2, &req(2, rule)).response, Response::Stored);
        let open = Command::OpenPiece { stream: foo(), epoch: 1, owner: 2, edge: "e".into(), session: "s".into() };
        assert_eq!(sm.apply(3, &req(3, open)).response, Response::Recording { id: 3 });
        let facts =
            crate::recording::PieceFacts { bytes: 1, frames: 1, first_ts: 0, last_ts: 0, dropped: 0, closed_ms: 0 };
        sm.apply(4, &req(4, Command::FinishPiece { recording: 3, epoch: 1, facts }));
        let back: StateMachine = crate::rpc::decode(&crate::rpc::encode(&sm)).unwrap();
        assert_eq!(back, sm);
        assert!(back.recordings.wanted(&foo()));
        assert_eq!(back.recordings.catalog[&3].pieces[0].finished.map(|f| f.closed_ms), Some(1_004));
    }

    #[test]
    fn recording_commands_share_log_entries() {
        assert!(Command::SetRecording { scope: KeyScope::App("a".into()), record: None }.batchable());
        assert!(Command::DeleteRecording { recording: 1 }.batchable());
    }

    #[test]
    fn draining_is_set_and_cleared_idempotently_and_bounded() {
        let mut sm = StateMachine::default();
        let drain = |origin, draining| Command::SetDraining { origin, draining };
        assert_eq!(sm.apply(1, &req(1, drain(2, true))).response, Response::Stored);
        assert_eq!(sm.apply(2, &req(2, drain(2, true))).response, Response::Stored, "draining twice is fine");
        assert_eq!(sm.apply(3, &req(3, drain(3, true))).response, Response::Stored);
        assert_eq!(sm.draining, BTreeSet::from([2, 3]));
        assert_eq!(sm.apply(4, &req(4, drain(2, false))).response, Response::Stored);
        assert_eq!(sm.apply(5, &req(5, drain(2, false))).response, Response::Stored, "undraining twice too");
        assert_eq!(sm.apply(6, &req(6, drain(9, false))).response, Response::Stored, "and a node never drained");
        assert_eq!(sm.draining, BTreeSet::from([3]));
        // A retry of the first request gets its answer and changes nothing.
        assert_eq!(sm.apply(7, &req(1, drain(2, true))).response, Response::Stored);
        assert_eq!(sm.draining, BTreeSet::from([3]));
        // Draining touches no claim.
        sm.apply(8, &req(8, claim("edge-1", "s1", 3, false)));
        let out = sm.apply(9, &req(9, drain(3, true)));
        assert!(out.events.is_empty());
        assert_eq!(sm.streams[&foo()].owner, 3);
        // Bounded: beyond MAX_DRAINING origins, refused (and not remembered).
        for i in 0..MAX_DRAINING as u64 {
            sm.apply(100 + i, &req(100 + u128::from(i), drain(100 + i, true)));
        }
        assert_eq!(sm.draining.len(), MAX_DRAINING);
        let refused = sm.apply(1_000, &req(1_000, drain(1_000, true))).response;
        assert!(matches!(refused, Response::Rejected(Rejection::LimitExceeded { .. })), "{refused:?}");
        assert!(!sm.draining.contains(&1_000));
        assert_eq!(sm.apply(1_001, &req(1_001, drain(3, true))).response, Response::Stored, "one already draining");
    }

    #[test]
    fn drain_commands_share_log_entries() {
        assert!(Command::SetDraining { origin: 1, draining: true }.batchable());
    }

    #[test]
    fn retiring_keys_keeps_only_the_newest() {
        let mut sm = StateMachine::default();
        let key = |b: u8| crate::token::TokenKey([b; 32]);
        sm.apply(1, &req(1, Command::AddTokenKey { key: key(1), only_if_none: false }));
        sm.apply(2, &req(2, Command::AddTokenKey { key: key(2), only_if_none: false }));
        sm.apply(3, &req(3, Command::RetireTokenKeys));
        assert_eq!(sm.token_keys.keys().copied().collect::<Vec<_>>(), vec![2]);
        sm.apply(4, &req(4, Command::RetireTokenKeys));
        assert_eq!(sm.token_keys.keys().copied().collect::<Vec<_>>(), vec![2], "the last key stays");
    }

    #[test]
    fn token_keys_are_added_once_and_rotate_keeping_the_previous_one() {
        let mut sm = StateMachine::default();
        let key = |b: u8| crate::token::TokenKey([b; 32]);
        sm.apply(1, &req(1, Command::AddTokenKey { key: key(1), only_if_none: true }));
        // A second first-issue race changes nothing.
        sm.apply(2, &req(2, Command::AddTokenKey { key: key(2), only_if_none: true }));
        assert_eq!(sm.token_keys.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(sm.token_keys[&1], key(1));
        sm.apply(3, &req(3, Command::AddTokenKey { key: key(3), only_if_none: false }));
        assert_eq!(sm.token_keys.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        sm.apply(4, &req(4, Command::AddTokenKey { key: key(4), only_if_none: false }));
        assert_eq!(sm.token_keys.keys().copied().collect::<Vec<_>>(), vec![2, 3], "the oldest is dropped");
        assert_eq!(sm.token_keys[&3], key(4));
    }

    #[test]
    fn refusals_for_quota_or_limits_are_known_ahead_and_not_remembered() {
        let mut sm = StateMachine::default();
        let quota = Quota { objects: 1, slots: 4, bytes: 1_000 };
        let ok = |r: &Response| matches!(r, Response::ObjectVersion { .. });
        let first = client("alice", quota, temp_set("a1", "x", Value::Null));
        assert_eq!(sm.refusal_ahead(&first), None);
        assert!(ok(&sm.apply(1, &req(1, first)).response));
        // A second object is over alice's quota: known ahead, and what apply says.
        let second = client("alice", quota, temp_set("a2", "x", Value::Null));
        let ahead = sm.refusal_ahead(&second).expect("refused ahead");
        assert!(matches!(ahead, Rejection::QuotaExceeded { .. }));
        assert_eq!(sm.apply(2, &req(2, second.clone())).response, Response::Rejected(ahead));
        // A refusal is not remembered: once alice's object is gone, the same request
        // (a retry) applies, once.
        assert_eq!(sm.answered(&RequestId(2)), None);
        sm.apply(3, &req(3, Command::DeleteObject { object: "a1".into(), if_version: None }));
        assert_eq!(sm.refusal_ahead(&second), None);
        assert!(ok(&sm.apply(4, &req(2, second.clone())).response));
        let again = sm.apply(5, &req(2, second)).response;
        assert_eq!(sm.objects["a2"].version, 1, "a retry of an applied write changes nothing: {again:?}");
        // Limits too, for the admin: a value over the size limit.
        let huge = Value::String("x".repeat(MAX_VALUE_BYTES + 1));
        let admin = Command::SetSlots {
            object: "b".into(),
            slots: vec![("s".into(), huge)],
            if_version: None,
            persistent: true,
        };
        assert!(matches!(sm.refusal_ahead(&admin), Some(Rejection::LimitExceeded { .. })));
        assert!(matches!(sm.apply(6, &req(6, admin)).response, Response::Rejected(Rejection::LimitExceeded { .. })));
        assert_eq!(sm.answered(&RequestId(6)), None);
        // Other refusals are remembered (a conditional write that lost stays lost).
        let stale = set("a2", "x", 1.0, Some(99));
        assert_eq!(sm.refusal_ahead(&stale), None, "only quotas and limits are decided ahead");
        assert!(matches!(sm.apply(7, &req(7, stale)).response, Response::Rejected(Rejection::VersionMismatch { .. })));
        assert!(sm.answered(&RequestId(7)).is_some());
    }

    #[test]
    fn client_quotas_hold_and_usage_follows_every_change() {
        let mut sm = StateMachine::default();
        let quota = Quota { objects: 2, slots: 3, bytes: 100 };
        let ok = |r: &Response| matches!(r, Response::ObjectVersion { .. });
        let quota_refused = |r: &Response| matches!(r, Response::Rejected(Rejection::QuotaExceeded { .. }));
        assert!(ok(&sm.apply(1, &req(1, client("alice", quota, temp_set("a1", "x", Value::Null)))).response));
        assert!(ok(&sm.apply(2, &req(2, client("alice", quota, temp_set("a2", "x", Value::Null)))).response));
        // A third object is over alice's quota; bob has his own.
        assert!(quota_refused(
            &sm.apply(3, &req(3, client("alice", quota, temp_set("a3", "x", Value::Null)))).response
        ));
        assert!(!sm.objects.contains_key("a3"));
        assert!(ok(&sm.apply(4, &req(4, client("bob", quota, temp_set("b1", "x", Value::Null)))).response));
        // Slots: alice holds 2; a third is fine, a fourth is not — whoever writes it.
        assert!(ok(&sm.apply(5, &req(5, client("alice", quota, temp_set("a1", "y", Value::Null)))).response));
        assert!(quota_refused(&sm.apply(6, &req(6, client("bob", quota, temp_set("a1", "z", Value::Null)))).response));
        // Bytes: a big value is refused; overwriting an existing slot is charged the difference.
        let big = Value::String("x".repeat(100));
        assert!(quota_refused(&sm.apply(7, &req(7, client("alice", quota, temp_set("a2", "x", big)))).response));
        assert_eq!(sm.subjects["alice"].slots, 3);
        // The admin is never refused by a quota, and its writes are counted.
        assert!(ok(&sm.apply(8, &req(8, set("a1", "admin", 1.0, None))).response));
        assert_eq!(sm.subjects["alice"].slots, 4);
        // Deleting a slot or the object frees it.
        let del = Command::DeleteSlot { object: "a1".into(), slot: "admin".into(), if_version: None };
        assert!(ok(&sm.apply(9, &req(9, client("bob", quota, del))).response));
        assert_eq!(sm.subjects["alice"].slots, 3);
        sm.apply(10, &req(10, Command::DeleteObject { object: "a2".into(), if_version: None }));
        assert_eq!(sm.subjects["alice"].objects, 1);
        assert_eq!(sm.subjects["alice"].slots, 2);
        assert!(ok(&sm.apply(11, &req(11, client("alice", quota, temp_set("a3", "x", Value::Null)))).response));
        sm.apply(12, &req(12, Command::DeleteObject { object: "a1".into(), if_version: None }));
        sm.apply(13, &req(13, Command::DeleteObject { object: "a3".into(), if_version: None }));
        assert!(!sm.subjects.contains_key("alice"), "a subject with no object is forgotten");
        assert!(!sm.client_objects.contains_key("a1"));
        // Only slot writes travel as client writes.
        let other = client("bob", quota, Command::ClearObject { object: "b1".into(), if_version: None });
        assert!(quota_refused(&sm.apply(14, &req(14, other)).response));
    }

    #[test]
    fn clients_cannot_take_the_admins_share_of_objects() {
        let mut sm = StateMachine::default();
        let quota = Quota { objects: u32::MAX, slots: u32::MAX, bytes: u64::MAX };
        for i in 0..MAX_CLIENT_OBJECTS as u128 {
            let w = client("flood", quota, temp_set(&format!("o{i}"), "x", Value::Null));
            assert!(matches!(sm.apply(i as u64 + 1, &req(i, w)).response, Response::ObjectVersion { .. }));
        }
        let one_more = client("other", quota, temp_set("late", "x", Value::Null));
        let out = sm.apply(1_000_000, &req(1_000_000, one_more));
        assert!(matches!(out.response, Response::Rejected(Rejection::QuotaExceeded { .. })), "{out:?}");
        let admin = sm.apply(1_000_001, &req(1_000_001, set("admin-object", "x", 1.0, None)));
        assert_eq!(admin.response, Response::ObjectVersion { version: 1 });
    }
}
