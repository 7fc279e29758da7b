//! Workloads that run for the whole schedule, each a set of tokio tasks that record
//! what they asked and what they were answered: shared-object registers, an
//! append-only set, a live RTMP stream, and the observer that samples the origins.

pub mod media;
pub mod observer;
pub mod register;
pub mod set;

use std::time::Instant;

/// What every workload task shares: the run's time origin and the admin credentials.
#[derive(Clone)]
pub struct Ctx {
    pub start: Instant,
    pub token: String,
}

impl Ctx {
    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// Long runs move to fresh register keys and a fresh set object every this many
/// seconds, so no key's history or object grows without bound.
pub const PERIOD_SECS: u64 = 60;

/// How long one admin request may take before its outcome counts as unknown: above
/// the origins' 5 s request deadline, so most answers are definite.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7);

/// The `current_version` of a 412 answer.
pub fn current_version(body: &serde_json::Value) -> Option<u64> {
    body["error"]["current_version"].as_u64().or_else(|| body["current_version"].as_u64())
}
