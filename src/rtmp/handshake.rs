//! The RTMP handshake (C0/C1/C2 ↔ S0/S1/S2, plain and Flash Player 9 digest), for
//! servers and clients, as a sans-IO state machine over rml_rtmp's handshake, which is
//! sound (its chunk layer is not, so we own that).
//!
//! Knows nothing of sockets or timeouts: the driver feeds bytes, sends what it is told,
//! and enforces the handshake timeout.

use rml_rtmp::handshake::{Handshake as RmlHandshake, HandshakeProcessResult, PeerType};

/// Why a handshake failed. The connection is closed; nothing else is affected.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's bytes are not an RTMP handshake (bad version byte, bad echo, …).
    #[error("invalid RTMP handshake: {0}")]
    Invalid(String),
}

/// What to do after feeding bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send `send`, then wait for more bytes.
    InProgress { send: Vec<u8> },
    /// Send `send`; the handshake is complete and `leftover` is the start of the
    /// chunk stream.
    Done { send: Vec<u8>, leftover: Vec<u8> },
}

/// One side of a handshake.
pub struct Handshake {
    inner: RmlHandshake,
}

impl Handshake {
    /// The server side: waits for C0 and C1.
    pub(crate) fn server() -> Self {
        Handshake { inner: RmlHandshake::new(PeerType::Server) }
    }

    /// The client side and the C0 + C1 bytes it opens with.
    pub fn client() -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut inner = RmlHandshake::new(PeerType::Client);
        let c0c1 = inner.generate_outbound_p0_and_p1().map_err(|e| HandshakeError::Invalid(e.to_string()))?;
        Ok((Handshake { inner }, c0c1))
    }

    /// Feeds bytes received from the peer.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Progress, HandshakeError> {
        match self.inner.process_bytes(bytes).map_err(|e| HandshakeError::Invalid(e.to_string()))? {
            HandshakeProcessResult::InProgress { response_bytes } => Ok(Progress::InProgress { send: response_bytes }),
            HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                Ok(Progress::Done { send: response_bytes, leftover: remaining_bytes })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a client and a server against each other, delivering `step` bytes at a time.
    /// Returns the server's leftover followed by what was never fed to it, and the
    /// client's leftover.
    fn converse(step: usize) -> (Vec<u8>, Vec<u8>) {
        let mut server = Handshake::server();
        let (mut client, c0c1) = Handshake::client().unwrap();
        let mut to_server = c0c1;
        let mut to_client = Vec::new();
        let (mut server_done, mut client_done) = (None, None);
        for _ in 0..10_000 {
            if server_done.is_some() && client_done.is_some() {
                break;
            }
            if server_done.is_none() && !to_server.is_empty() {
                let n = step.min(to_server.len());
                let chunk: Vec<u8> = to_server.drain(..n).collect();
                match server.feed(&chunk).unwrap() {
                    Progress::InProgress { send } => to_client.extend(send),
                    Progress::Done { send, leftover } => {
                        to_client.extend(send);
                        server_done = Some(leftover);
                    }
                }
            }
            if client_done.is_none() && !to_client.is_empty() {
                let n = step.min(to_client.len());
                let chunk: Vec<u8> = to_client.drain(..n).collect();
                match client.feed(&chunk).unwrap() {
                    Progress::InProgress { send } => to_server.extend(send),
                    Progress::Done { send, leftover } => {
                        to_server.extend(send);
                        // The first chunk-stream bytes ride along with C2.
                        to_server.extend_from_slice(b"chunks");
                        client_done = Some(leftover);
                    }
                }
            }
        }
        let mut server_side = server_done.expect("server completes");
        server_side.extend(to_server);
        (server_side, client_done.expect("client completes"))
    }

    #[test]
    fn client_and_server_complete_whatever_the_read_sizes() {
        for step in [1, 7, 1536, 1537, 4096] {
            let (server_side, client_leftover) = converse(step);
            assert!(client_leftover.is_empty());
            // Whatever followed C2 in the same read is handed over, not swallowed.
            assert_eq!(server_side, b"chunks", "step {step}");
        }
    }

    #[test]
    fn a_wrong_version_byte_is_refused() {
        let mut server = Handshake::server();
        let mut bad = vec![6u8];
        bad.extend([0u8; 1536]);
        assert!(server.feed(&bad).is_err());
    }

    #[test]
    fn hostile_bytes_never_panic() {
        for seed in 0..200u32 {
            let mut server = Handshake::server();
            let mut bytes = vec![3u8];
            bytes.extend((0..3100u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97) >> 11) as u8));
            for chunk in bytes.chunks(1 + seed as usize % 700) {
                if server.feed(chunk).is_err() {
                    break;
                }
            }
        }
    }
}
