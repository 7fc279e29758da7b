//! What the workloads and the observer record: the operation history the checkers read
//! and `DIR/<schedule>/*.jsonl` keeps for replay. Plain data, no I/O.
//!
//! Times are microseconds since the run's start (one `Instant` shared by every task).

use serde::{Deserialize, Serialize};

/// One shared-object register operation (one object per key, slot `v`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterOp {
    /// Client that issued it (each client talks to one origin).
    pub client: u32,
    /// Origin the request was sent to.
    pub origin: u32,
    pub key: u32,
    pub call_us: u64,
    /// When the answer came; `None` while the outcome is unknown.
    pub ret_us: Option<u64>,
    pub input: RegisterInput,
    pub output: RegisterOutput,
    /// The `Idempotency-Key` a write was sent with (a retry gets the first answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idem: Option<String>,
    /// The answer came from resending with the same `Idempotency-Key` after an unknown
    /// outcome (`ret_us` is when that answer came, not when the write took effect).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolved: bool,
}

/// What was asked.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum RegisterInput {
    /// `GET /shared-objects/<key>` (linearizable read).
    Read,
    /// `PUT …/slots/v` with a unique value.
    Write { value: i64 },
    /// `PUT …/slots/v` with `If-Match: expect`.
    Cas { expect: u64, value: i64 },
}

/// What was answered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum RegisterOutput {
    /// The object's version and slot value (`0`, `None` for a missing object).
    Read { version: u64, value: Option<i64> },
    /// The write was applied and made the object this version.
    Written { version: u64 },
    /// 412: the object was at `current`, not the expected version.
    Mismatch { current: u64 },
    /// No answer, a timeout or a 5xx: it may or may not have been applied.
    Unknown,
    /// Definitely not applied: the connection was refused, nothing was sent.
    Failed,
}

impl RegisterOp {
    /// Whether this is a write or CAS that was acknowledged.
    pub fn acked_write(&self) -> bool {
        matches!(self.output, RegisterOutput::Written { .. })
    }
}

/// One append to the set object: a unique slot set to `true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetAdd {
    /// The slot name, also the add's `Idempotency-Key`.
    pub element: String,
    pub origin: u32,
    pub call_us: u64,
    pub ret_us: Option<u64>,
    pub outcome: AddOutcome,
}

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddOutcome {
    Acked,
    /// A definite refusal (4xx other than a timeout).
    Failed,
    Unknown,
}

/// The set as one origin returned it at the end (`None`: that read failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRead {
    pub origin: u32,
    pub elements: Option<Vec<String>>,
}

/// One claim as one origin showed it in `GET /streams?stale=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimSeen {
    pub t_us: u64,
    /// The origin that answered.
    pub via: u32,
    pub stream: String,
    pub epoch: u64,
    pub owner: u32,
}

/// One `GET /cluster/status` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusSeen {
    pub t_us: u64,
    pub via: u32,
    pub term: u64,
    pub leader: Option<u32>,
    pub is_leader: bool,
}

/// What a media client saw, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum MediaEvent {
    /// A video frame with this sequence number arrived.
    Frame { t_us: u64, seq: u64 },
    /// The RTMP connection dropped or failed (the client reconnects).
    Disconnect { t_us: u64, why: String },
}

/// A player's (or the publisher's) whole record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaTrace {
    pub client: String,
    pub events: Vec<MediaEvent>,
}

/// A fault as it was injected and healed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: String,
    pub detail: String,
    pub start_us: u64,
    pub end_us: u64,
}
