//! The versioned boundary: every type that is written into the Raft log, a snapshot or
//! a Raft RPC body.
//!
//! These types are encoded with bincode, which identifies enum variants by position.
//! Compatibility rules: append new variants and new commands at the end; never reorder,
//! remove or change the fields of an existing variant; bump [`FORMAT_VERSION`] when a
//! change cannot follow these rules.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::value::Value;
use crate::NodeId;

/// Version of the log, snapshot and RPC encoding defined in this module.
pub const FORMAT_VERSION: u32 = 1;

/// Longest app or stream name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Identifies one client request across retries, so a retried command is applied once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl RequestId {
    /// A fresh random id.
    pub fn random() -> Self {
        RequestId(rand::random())
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// `app/name` of a live stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamKey {
    pub app: String,
    pub name: String,
}

/// Why an app or stream name is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("{0} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(&'static str),
    #[error("{0} may contain only letters, digits and . _ - (got {1:?})")]
    BadChar(&'static str, String),
    #[error("a pin pattern may contain only letters, digits, . _ - and * (got {0:?})")]
    BadPatternChar(String),
    #[error("{0} is longer than {MAX_OBJECT_NAME_LEN} bytes")]
    ObjectNameTooLong(&'static str),
    #[error("{0} must have no control characters and not be . or .. (got \"{1}\")")]
    BadObjectName(&'static str, String),
}

/// Checks an app or stream name: 1..=128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_name(what: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty(what));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(what));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(NameError::BadChar(what, s.to_owned()));
    }
    Ok(())
}

impl StreamKey {
    /// A validated stream key.
    pub fn new(app: &str, name: &str) -> Result<Self, NameError> {
        validate_name("app", app)?;
        validate_name("stream name", name)?;
        Ok(StreamKey { app: app.to_owned(), name: name.to_owned() })
    }
}

/// Longest shared-object or slot name, in bytes.
pub const MAX_OBJECT_NAME_LEN: usize = 256;

/// A shared-object (or slot) name, validated once where it enters (the edge's HTTP and
/// RTMP input, the origin's routes): 1 to [`MAX_OBJECT_NAME_LEN`] bytes, no control
/// characters, not `.` or `..` (which a URL would treat as a path step). Any other
/// character is allowed (`live/test/chat`), so wherever a name goes into a URL it goes
/// through [`ObjectName::url_segment`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

impl ObjectName {
    /// A validated name; `what` names it in the error ("object name", "slot name").
    pub fn parse(what: &'static str, s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty(what));
        }
        if s.len() > MAX_OBJECT_NAME_LEN {
            return Err(NameError::ObjectNameTooLong(what));
        }
        if s.chars().any(char::is_control) || s == "." || s == ".." {
            return Err(NameError::BadObjectName(what, s.escape_debug().to_string()));
        }
        Ok(ObjectName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The name as one URL path segment: every byte but `A-Z a-z 0-9 - . _ ~`
    /// percent-encoded, so `/`, `?`, `#` and `%` stay inside the segment.
    pub fn url_segment(&self) -> String {
        escape_segment(&self.0)
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `s` as one URL path segment (RFC 3986 unreserved bytes kept, all others
/// percent-encoded).
pub fn escape_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Which streams a pin rule covers: those of `app` whose name matches `pattern`, an
/// exact name or a glob in which each `*` matches any run of characters (`vip-*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PinScope {
    pub app: String,
    pub pattern: String,
}

impl PinScope {
    /// A validated scope: `app` is a name, `pattern` a name that may contain `*`.
    pub fn new(app: &str, pattern: &str) -> Result<Self, NameError> {
        validate_name("app", app)?;
        if pattern.is_empty() {
            return Err(NameError::Empty("pattern"));
        }
        if pattern.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong("pattern"));
        }
        if !pattern.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b)) {
            return Err(NameError::BadPatternChar(pattern.to_owned()));
        }
        Ok(PinScope { app: app.to_owned(), pattern: pattern.to_owned() })
    }

    /// Whether the pattern is an exact name (no `*`).
    pub fn is_exact(&self) -> bool {
        !self.pattern.contains('*')
    }

    /// Whether this rule covers `stream`.
    pub fn covers(&self, stream: &StreamKey) -> bool {
        self.app == stream.app && glob_match(self.pattern.as_bytes(), stream.name.as_bytes())
    }

    /// How specific the rule is; the most specific matching rule wins. An exact name
    /// beats any glob; among globs, more literal (non-`*`) characters win.
    pub fn specificity(&self) -> (bool, usize) {
        (self.is_exact(), self.pattern.bytes().filter(|b| *b != b'*').count())
    }
}

impl fmt::Display for PinScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.pattern)
    }
}

/// Glob matching where `*` matches any run of bytes (also none) and every other byte
/// matches itself. Linear backtracking to the last `*`: O(len(pattern) * len(name)) at
/// worst, and both are at most [`MAX_NAME_LEN`] bytes.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and the name position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more byte and retry after it.
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

/// The application data of one Raft log entry: requests applied in order.
///
/// The leader batches concurrent requests into one entry (openraft 0.9 makes every
/// append wait for its own flush, so one entry per request would cap writes at one
/// fsync each). Stream-ownership commands always travel alone, so a claim's epoch —
/// the entry's log index — names exactly one claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub requests: Vec<Request>,
}

impl Proposal {
    pub fn single(request: Request) -> Self {
        Proposal { requests: vec![request] }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal of {} requests", self.requests.len())
    }
}

/// The state machine's answers to one entry: one per request of its [`Proposal`]
/// (none for blank and membership entries).
pub type Responses = Vec<Response>;

/// One client request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen id; a retry reuses it and gets the first answer back.
    pub id: RequestId,
    /// Wall-clock milliseconds, stamped by the leader when it proposes. The state
    /// machine never reads a clock.
    pub at_ms: u64,
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.id, self.command)
    }
}

/// Scope of a publish key: a whole app, or one stream of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyScope {
    App(String),
    Stream(StreamKey),
}

impl fmt::Display for KeyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyScope::App(app) => f.write_str(app),
            KeyScope::Stream(key) => key.fmt(f),
        }
    }
}

impl Command {
    /// Whether this command may share a log entry with others (see [`Proposal`]).
    pub fn batchable(&self) -> bool {
        !matches!(
            self,
            Command::ClaimStream { .. }
                | Command::ReleaseStream { .. }
                | Command::ReassignStream { .. }
                | Command::DropEdgeClaims { .. }
        )
    }
}

/// A replicated command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Claim a stream for a publishing session. The leader has chosen `owner`. Succeeds
    /// when the stream is free, when the same session claims it again, or when
    /// `takeover` is set (the edge verified the publish key of a reconnecting publisher).
    /// The claim's epoch is the log index of this entry.
    ClaimStream { stream: StreamKey, owner: NodeId, edge: String, session: String, takeover: bool },
    /// Release a claim; only the holder of the current epoch can.
    ReleaseStream { stream: StreamKey, epoch: u64 },
    /// Move a stream to another owner origin, fencing the expected (current) epoch.
    ReassignStream { stream: StreamKey, expected_epoch: u64, owner: NodeId },
    /// Drop every claim published through `edge` (the edge is gone).
    DropEdgeClaims { edge: String },
    /// Set slots of a shared object, creating it if needed; with `if_version`, only if
    /// the object's current version (0 when absent) equals it.
    SetSlots { object: String, slots: Vec<(String, Value)>, if_version: Option<u64>, persistent: bool },
    /// Delete one slot.
    DeleteSlot { object: String, slot: String, if_version: Option<u64> },
    /// Remove every slot of an object (the object and its version remain).
    ClearObject { object: String, if_version: Option<u64> },
    /// Store the hash of a publish key for an app or a stream (replacing an older one).
    SetPublishKey { scope: KeyScope, key_hash: String },
    /// Whether publishing to `app` requires a key.
    SetAppPolicy { app: String, publish_key_required: bool },
    /// Pin the streams `scope` covers to origin `origin` (replacing the rule with the
    /// same scope). The leader gives new claims of those streams to that origin while
    /// it is a live voter. Answers `Stored`.
    SetPin { scope: PinScope, origin: NodeId },
    /// Remove the pin rule with exactly this scope. Answers `Stored`, or
    /// `Rejected(NotFound)` when there is none.
    DeletePin { scope: PinScope },
    /// Remove a whole object (a temporary one whose last subscriber left). Answers
    /// `Stored`, `Rejected(NotFound)`, or `Rejected(VersionMismatch)` when `if_version`
    /// is given and differs (the object changed since it was judged unused).
    DeleteObject { object: String, if_version: Option<u64> },
    /// Add a token signing key (its id is one more than the highest so far) and drop the
    /// oldest beyond [`crate::token::MAX_TOKEN_KEYS`]. With `only_if_none`, nothing
    /// happens when a key exists (the first token issue races no one). Answers `Stored`.
    AddTokenKey { key: crate::token::TokenKey, only_if_none: bool },
    /// A slot write (`SetSlots` or `DeleteSlot`) by a client holding a token for
    /// `subject`: objects it creates are charged to `subject` within `quota`, and
    /// clients together create at most [`crate::state::MAX_CLIENT_OBJECTS`], so the
    /// admin always has room. Answers what the inner command answers, or
    /// `Rejected(QuotaExceeded)`.
    ClientWrite { subject: String, quota: crate::token::Quota, command: Box<Command> },
    /// Which stream tokens `app` requires (neither: remove the rule). Answers `Stored`.
    SetAppTokens { app: String, tokens: crate::state::AppTokens },
    /// Set (or with `None` remove) `app`'s webhooks. Answers `Stored`.
    SetAppHooks { app: String, hooks: Option<crate::state::AppHooks> },
    /// Drop every token signing key but the newest: tokens signed with older keys stop
    /// verifying. Answers `Stored`.
    RetireTokenKeys,
    /// Start (`draining: true`) or stop draining `origin`: the leader places no new
    /// stream there while another live origin is not draining, and moves the streams it
    /// owns to other origins by planned moves. Which ids are members is the leader's
    /// check (the state machine does not know the membership). Answers `Stored`, or
    /// `Rejected(LimitExceeded)` beyond [`crate::state::MAX_DRAINING`] draining origins.
    /// (Appended last: bincode numbers variants by position.)
    SetDraining { origin: NodeId, draining: bool },
    /// Record the streams `scope` covers (`Some(true)`), except them from their app's
    /// rule (`Some(false)`, for a stream), or remove the rule (`None`; `NotFound` when
    /// there is none). Admin only. Answers `Stored`, or `Rejected(LimitExceeded)` beyond
    /// [`crate::recording::MAX_RECORD_RULES`]. (This and the four below were appended
    /// together, after `SetDraining`.)
    SetRecording { scope: KeyScope, record: Option<bool> },
    /// The owner `owner` of `stream` started writing a recording piece under the claim
    /// at `epoch` of the publishing session `edge`/`session`: the piece joins the latest
    /// recording of that session, or opens a new one (its id is this entry's index).
    /// Answers `Recording { id }`, the same for a piece opened before; `LimitExceeded`
    /// beyond the catalog's bounds ([`crate::recording`]).
    OpenPiece { stream: StreamKey, epoch: u64, owner: NodeId, edge: String, session: String },
    /// The piece written under `epoch` is complete: its owner holds it. Answers
    /// `Stored` (also when finished before: the first facts stay), or `NotFound`.
    FinishPiece { recording: u64, epoch: u64, facts: crate::recording::PieceFacts },
    /// `holder` has a complete copy of the finished piece written under `epoch`.
    /// Answers `Stored`, `NotFound` (no such piece, or not finished), `LimitExceeded`.
    AddPieceHolder { recording: u64, epoch: u64, holder: NodeId },
    /// Remove a recording from the catalog; origins then delete its piece files.
    /// Answers `Stored` or `NotFound`.
    DeleteRecording { recording: u64 },
    /// Set how long and how much finished recordings are kept (the leader deletes the
    /// oldest beyond either bound with `DeleteRecording`). Answers `Stored`. (Appended
    /// last.)
    SetRecordingRetention { retention: crate::recording::Retention },
}

/// A stream's current claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamClaim {
    /// The origin that receives and fans out the stream's media.
    pub owner: NodeId,
    /// Log index of the claim or the latest re-assignment; fences older holders.
    pub epoch: u64,
    /// The edge the publisher is connected to.
    pub edge: String,
    /// The publishing session on that edge.
    pub session: String,
    /// Leader time of the claim, in Unix milliseconds.
    pub since_ms: u64,
}

/// The answer of the state machine to one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The stream is (now) held under this claim.
    Claimed(StreamClaim),
    /// The claim was released.
    Released,
    /// Claims dropped by `DropEdgeClaims`.
    EdgeDropped { streams: Vec<StreamKey> },
    /// A shared-object write applied; the object's new version.
    ObjectVersion { version: u64 },
    /// A publish key or policy was stored.
    Stored,
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// The recording a piece belongs to (`OpenPiece`). (Appended last.)
    Recording { id: u64 },
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// Another live session holds the stream.
    StreamOwned { owner: NodeId, epoch: u64, edge: String },
    /// The epoch given is not the stream's current one (`None`: no claim exists).
    StaleEpoch { current: Option<u64> },
    /// A conditional write's expected version differs from the current one.
    VersionMismatch { current: u64 },
    /// The object or slot does not exist.
    NotFound,
    /// The app requires a publish key and none given matched.
    PublishDenied,
    /// A limit of the replicated state would be exceeded (objects, slots per object,
    /// value size); `what` says which, for the client.
    LimitExceeded { what: String },
    /// A client write would exceed its subject's quota or the clients' share of the
    /// object limit; `what` says which.
    QuotaExceeded { what: String },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::StreamOwned { owner, epoch, edge } => {
                write!(f, "stream is owned by origin {owner} at epoch {epoch} (published via {edge})")
            }
            Rejection::StaleEpoch { current: Some(c) } => write!(f, "stale epoch; current epoch is {c}"),
            Rejection::StaleEpoch { current: None } => f.write_str("stale epoch; the stream has no claim"),
            Rejection::VersionMismatch { current } => write!(f, "version mismatch; current version is {current}"),
            Rejection::NotFound => f.write_str("not found"),
            Rejection::PublishDenied => f.write_str("publishing requires a valid key"),
            Rejection::LimitExceeded { what } => write!(f, "limit exceeded: {what}"),
            Rejection::QuotaExceeded { what } => write!(f, "quota exceeded: {what}"),
        }
    }
}

/// A request an origin forwards to the node it believes leads (Raft RPC route
/// `/raft/forward`). The leader executes it locally; it never forwards again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Forward {
    /// Propose a command. The leader re-stamps `at_ms`.
    Write(Request),
    /// Add a node as a learner (waits until it has caught up).
    AddLearner { id: NodeId, addr: crate::NodeAddr },
    /// Make exactly these nodes the voters.
    SetVoters { ids: std::collections::BTreeSet<NodeId> },
    /// Remove a node from voters and learners.
    RemoveNode { id: NodeId },
    /// Confirm leadership with a quorum and return the index a linearizable read
    /// must wait for.
    ReadIndex,
    /// Claim a stream for a publishing session: the leader checks `key` against the
    /// replicated publish keys, picks the owner origin and proposes
    /// `Command::ClaimStream` under `id`.
    Claim { id: RequestId, stream: StreamKey, edge: String, session: String, takeover: bool, key: Option<String> },
    /// Who owns `stream` and where its media link is (answered from any node's applied
    /// state; players tolerate a stale answer and follow ownership changes).
    Lookup { stream: StreamKey },
    /// Move `stream` off `away_from` (an origin the asking edge cannot reach): the leader
    /// picks a new owner among live voters other than `away_from` and proposes
    /// `ReassignStream { expected_epoch }` under `id`. Answers `Written(Claimed(new))`, or
    /// `Written(Rejected(StaleEpoch { current }))` when the claim is no longer at
    /// `expected_epoch` (someone re-assigned or re-claimed it first), or
    /// `Written(Rejected(StaleEpoch { current: None }))` when there is no claim;
    /// `Failed { kind: Unavailable, .. }` when no live voter other than `away_from`
    /// exists. A retry with the same `id` gets the first answer.
    Reassign { id: RequestId, stream: StreamKey, expected_epoch: u64, away_from: NodeId },
    /// Wait until the applied claim of `stream` differs from `known_epoch` (a new epoch,
    /// a release, or a first claim when `known_epoch` is None), or `wait_ms` passed
    /// (capped at [`MAX_WATCH_MS`]), then answer `Owner { claim, media }` like `Lookup`.
    /// Answered by any origin from its applied state (no leadership needed): the edges'
    /// change feed.
    WatchStream { stream: StreamKey, known_epoch: Option<u64>, wait_ms: u32 },
    /// Propose several commands: a follower passing on, in one request, the writes its
    /// clients sent while its previous requests were in flight. Answered `Batch`, one
    /// reply per request in the same order, each as `Write` would be answered.
    WriteBatch(Vec<Request>),
    /// Every member's media-link address as this node knows it (answered locally,
    /// `Origins`): where an edge finds an origin to follow claims on.
    Origins,
    /// An operator's planned move of `stream` (claimed at `expected_epoch`) to origin
    /// `to`, or with `None` to the least loaded live voter other than its owner: the
    /// leader proposes `ReassignStream { expected_epoch }` under `id`. Answers as
    /// `Reassign` does; `to` already owning it answers its current claim (nothing
    /// moves); `to` not a live voter fails `Unavailable`, `to` draining fails `Conflict`,
    /// and without `to`, only draining voters besides the owner fails `Unavailable`.
    /// (Appended last: the variants' wire numbers of older nodes stay as they were.)
    Move { id: RequestId, stream: StreamKey, expected_epoch: u64, to: Option<NodeId> },
}

/// Longest wait of a [`Forward::WatchStream`]; longer requests wait this long.
pub const MAX_WATCH_MS: u32 = 30_000;

impl Forward {
    /// Whether the node that receives this request answers it from its own applied
    /// state, never forwarding it to the leader nor retrying it there.
    pub fn answered_locally(&self) -> bool {
        matches!(self, Forward::Lookup { .. } | Forward::WatchStream { .. } | Forward::Origins)
    }
}

/// The leader's answer to a [`Forward`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ForwardReply {
    /// The command committed and applied with this response.
    Written(Response),
    /// The membership change committed.
    Done,
    /// Reads at or after this applied index are linearizable.
    ReadIndex(u64),
    /// This node does not lead; `leader` is who it believes does (retry there).
    NotLeader { leader: Option<NodeId> },
    /// The request cannot succeed as given.
    Failed { kind: FailKind, message: String },
    /// The answer to `Lookup`: the stream's claim and its owner's media address.
    Owner { claim: Option<StreamClaim>, media: Option<String> },
    /// The answers to `WriteBatch`, in its order.
    Batch(Vec<ForwardReply>),
    /// The answer to `Origins`: (node, media-link address) of every member.
    Origins(Vec<(NodeId, String)>),
}

/// Classes of non-retryable failure, mapped to HTTP status codes by the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailKind {
    BadRequest,
    NotFound,
    Conflict,
    /// Raft on the leader has stopped.
    Unavailable,
    /// Admission control refused the write: replication or apply is behind, so the
    /// write was never proposed. The client may retry after a second (HTTP 429 with
    /// `Retry-After`, an RTMP shared-object status event).
    Overloaded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_validated_and_escaped_as_one_segment() {
        let name = ObjectName::parse("object name", "../../raft/forward?").unwrap();
        assert_eq!(name.url_segment(), "..%2F..%2Fraft%2Fforward%3F");
        assert_eq!(ObjectName::parse("o", "live/test/chat").unwrap().url_segment(), "live%2Ftest%2Fchat");
        assert_eq!(ObjectName::parse("o", "a b%c#é").unwrap().url_segment(), "a%20b%25c%23%C3%A9");
        for bad in ["", ".", "..", "a\nb", "\u{7f}"] {
            assert!(ObjectName::parse("o", bad).is_err(), "{bad:?}");
        }
        assert!(ObjectName::parse("o", &"x".repeat(MAX_OBJECT_NAME_LEN)).is_ok());
        assert!(ObjectName::parse("o", &"x".repeat(MAX_OBJECT_NAME_LEN + 1)).is_err());
    }
}
