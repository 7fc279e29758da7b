//! Raft RPC between origins over HTTP: the wire encoding, the cluster-secret check and
//! the server routes (`/raft/append`, `/raft/vote`, `/raft/snapshot`).
//!
//! Bodies are bincode 2 (serde). Every route requires the cluster secret in
//! [`SECRET_HEADER`]; a request without it is refused before its body is read
//! ([`require_secret`]), so nobody without the secret makes an origin buffer a body.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::typ::Raft;

/// Header carrying the cluster secret on every origin-to-origin request.
pub const SECRET_HEADER: &str = "x-raftcast-cluster-secret";

/// Largest Raft RPC body accepted (append batches and snapshot chunks stay far below).
pub const MAX_RPC_BODY: usize = 64 * 1024 * 1024;

/// The shared secret that authenticates origins to each other (and edges to origins).
#[derive(Clone)]
pub struct ClusterSecret(Arc<str>);

impl ClusterSecret {
    /// Shortest secret accepted: short secrets are guessable.
    pub const MIN_LEN: usize = 16;

    pub fn new(secret: &str) -> Result<Self, String> {
        let secret = secret.trim();
        if secret.len() < Self::MIN_LEN {
            return Err(format!("the cluster secret must be at least {} characters", Self::MIN_LEN));
        }
        Ok(ClusterSecret(secret.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `headers` carry this secret (compared in constant time).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        headers.get(SECRET_HEADER).is_some_and(|v| constant_time_eq(v.as_bytes(), self.0.as_bytes()))
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Compares two byte strings without an early exit on the first difference.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RPC_BODY>,
> {
    bincode::config::standard().with_limit::<MAX_RPC_BODY>()
}

/// Encodes a value for the wire or the disk.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding into a Vec only fails for types serde cannot express in bincode
    // (e.g. `deserialize_any`-only types); none of ours are.
    bincode::serde::encode_to_vec(value, config()).expect("raftcast types always encode with bincode")
}

/// Decodes a value; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config()).map_err(DecodeError::Bincode)?;
    if read != bytes.len() {
        return Err(DecodeError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

/// How many bytes [`encode`] would produce for `value`, without producing them.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(value, &mut size, config()).expect("raftcast types always encode with bincode");
    size.bytes_written
}

/// Encodes a value into `out` (the same bytes as [`encode`]), without a copy in memory.
/// Returns the bytes written; an error is `out`'s.
pub fn encode_into<T: Serialize, W: std::io::Write + ?Sized>(value: &T, out: &mut W) -> std::io::Result<usize> {
    bincode::serde::encode_into_std_write(value, &mut &mut *out, config()).map_err(|e| match e {
        bincode::error::EncodeError::Io { inner, .. } => inner,
        other => std::io::Error::other(other.to_string()),
    })
}

/// Decodes one value from `input`, reading no further than its end (wrap a file in a
/// `BufReader`: this reads a few bytes at a time). Bytes after it are not looked at.
pub fn decode_from<T: DeserializeOwned>(input: &mut impl std::io::Read) -> Result<T, DecodeError> {
    bincode::serde::decode_from_std_read(input, config()).map_err(DecodeError::Bincode)
}

/// A body that is not a valid encoding of the expected type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid bincode: {0}")]
    Bincode(bincode::error::DecodeError),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
    /// The bytes could not be read (a value decoded from a file).
    #[error("cannot read: {0}")]
    Io(std::io::Error),
}

/// The Raft RPC routes, served next to the admin API.
/// Accepted AppendEntries are recorded in `contact`.
pub fn routes(raft: Raft, secret: ClusterSecret, contact: crate::network::LeaderContact) -> Router {
    Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route_layer(axum::middleware::from_fn_with_state(secret.clone(), require_secret))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(RpcState { raft, secret, contact })
}

/// Middleware: refuses a request without the cluster secret before its body is read.
pub async fn require_secret(
    State(secret): State<ClusterSecret>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !secret.admits(req.headers()) {
        return Refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret".into()).into_response();
    }
    next.run(req).await
}

#[derive(Clone)]
struct RpcState {
    raft: Raft,
    secret: ClusterSecret,
    contact: crate::network::LeaderContact,
}

/// Authenticates and decodes an RPC body, or answers why not.
pub fn admit<T: DeserializeOwned>(secret: &ClusterSecret, headers: &HeaderMap, body: &[u8]) -> Result<T, Refused> {
    if !secret.admits(headers) {
        return Err(Refused(StatusCode::UNAUTHORIZED, "missing or wrong cluster secret".into()));
    }
    decode(body).map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("bad RPC body: {e}")))
}

/// An RPC refused before it reached Raft: its status and a plain-text reason.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// A bincode response body.
pub fn reply<T: Serialize>(value: &T) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/octet-stream")], encode(value)).into_response()
}

async fn append(State(s): State<RpcState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    match admit::<openraft::raft::AppendEntriesRequest<crate::TypeConfig>>(&s.secret, &headers, &body) {
        Ok(req) => {
            let entries = req.entries.len();
            let result = s.raft.append_entries(req).await;
            if matches!(&result, Ok(r) if r.is_success()) {
                s.contact.record(std::time::Instant::now());
            }
            let answer = reply(&result);
            // What one AppendEntries costs this follower (decode, append, sync): it must
            // fit in the leader's heartbeat interval (docs/origin-cluster.md).
            if entries > 0 {
                tracing::debug!(
                    entries,
                    bytes = body.len(),
                    took_us = started.elapsed().as_micros() as u64,
                    "append entries handled"
                );
            }
            answer
        }
        Err(refused) => refused.into_response(),
    }
}

async fn vote(State(s): State<RpcState>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&s.secret, &headers, &body) {
        Ok(req) => reply(&s.raft.vote(req).await),
        Err(refused) => refused.into_response(),
    }
}

async fn snapshot(State(s): State<RpcState>, headers: HeaderMap, body: Bytes) -> Response {
    match admit(&s.secret, &headers, &body) {
        Ok(req) => reply(&s.raft.install_snapshot(req).await),
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::Entry;
    use crate::{Forward, ForwardReply, Proposal};
    use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
    use proptest::prelude::*;

    fn decode_everything(bytes: &[u8]) {
        // Every type that arrives from the network: errors are fine, panics are not.
        let _ = decode::<AppendEntriesRequest<crate::TypeConfig>>(bytes);
        let _ = decode::<VoteRequest<crate::NodeId>>(bytes);
        let _ = decode::<InstallSnapshotRequest<crate::TypeConfig>>(bytes);
        let _ = decode::<Forward>(bytes);
        let _ = decode::<ForwardReply>(bytes);
        let _ = decode::<Entry>(bytes);
        let _ = decode::<Proposal>(bytes);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_everything(&bytes);
        }

        #[test]
        fn mutated_valid_messages_never_panic_the_decoder(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let req = crate::Request {
                id: crate::RequestId(7),
                at_ms: 1,
                command: crate::Command::SetSlots {
                    object: "o".into(),
                    slots: vec![("s".into(), crate::Value::Array(vec![crate::Value::String("x".into())]))],
                    if_version: Some(3),
                    persistent: true,
                },
            };
            let mut bytes = encode(&Forward::Write(req));
            for (at, x) in flips {
                let i = at % bytes.len();
                bytes[i] ^= x;
            }
            decode_everything(&bytes);
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating_it() {
        // A Vec length of u64::MAX must fail (the limit), not abort on allocation.
        let mut bytes = vec![0u8]; // Forward::Write variant
        bytes.extend([0xff; 9]);
        assert!(decode::<Forward>(&bytes).is_err());
        assert!(decode::<Proposal>(&[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]).is_err());
    }

    #[test]
    fn forwarded_requests_keep_their_wire_positions() {
        // bincode names enum variants by position: new variants only ever go at the end.
        let stream = crate::StreamKey::new("live", "foo").unwrap();
        assert_eq!(encode(&Forward::ReadIndex)[0], 4);
        assert_eq!(encode(&Forward::Lookup { stream: stream.clone() })[0], 6);
        let reassign =
            Forward::Reassign { id: crate::RequestId(1), stream: stream.clone(), expected_epoch: 9, away_from: 2 };
        assert_eq!(encode(&reassign)[0], 7);
        let watch = Forward::WatchStream { stream, known_epoch: Some(9), wait_ms: 500 };
        assert_eq!(encode(&watch)[0], 8);
        let batch = Forward::WriteBatch(vec![crate::Request {
            id: crate::RequestId(2),
            at_ms: 0,
            command: crate::Command::DeleteObject { object: "o".into(), if_version: None },
        }]);
        assert_eq!(encode(&batch)[0], 9);
        for req in [reassign, watch, batch] {
            assert_eq!(decode::<Forward>(&encode(&req)).unwrap(), req);
        }
        let replies = crate::ForwardReply::Batch(vec![crate::ForwardReply::Done]);
        assert_eq!(encode(&replies)[0], 6);
        assert_eq!(decode::<crate::ForwardReply>(&encode(&replies)).unwrap(), replies);
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&Forward::ReadIndex);
        bytes.push(0);
        assert!(matches!(decode::<Forward>(&bytes), Err(DecodeError::Trailing(1))));
    }
}
