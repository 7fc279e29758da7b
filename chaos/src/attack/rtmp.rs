//! Socket attacks on the RTMP port and the origins' media-link port: handshakes that
//! never finish, sessions that drip or leave messages half sent, publish floods, Hellos
//! that never end and an oversized frame before authentication. The RTMP handshake is
//! the product's sans-IO one, driven here over a socket bound to the source address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftcast::bench::client::RtmpClient;
use raftcast::rtmp::handshake::{Handshake, Progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{connect, join, start_delay, AttackKind, AttackParams, Stop, Tally, ATTEMPT_TIMEOUT};

/// The RTMP chunk size before anyone changes it.
const CHUNK: u32 = 128;
/// Largest RTMP message length (24 bits).
const MAX_MESSAGE: u32 = 0xFF_FFFF;
/// Bytes the drip attack sends each time (the figure).
const DRIP_BYTES: usize = 16;
/// Chunk streams one `rtmp-partial` connection leaves a message open on.
const PARTIAL_STREAMS: u32 = 3;
/// Largest single write of the bulk attacks: their memory is this, not what they send.
const WRITE_BLOCK: usize = 64 * 1024;

/// The byte stream of one RTMP message (AMF0 command, type 20, on chunk stream `csid`)
/// that is never finished: a type-0 header, then the body in 128-byte chunks with a
/// type-3 header between them, stopping one byte short of the declared length.
pub struct EndlessMessage {
    header: [u8; 12],
    header_sent: usize,
    len: u32,
    body_sent: u32,
    need_continuation: bool,
    csid: u8,
}

impl EndlessMessage {
    pub fn new(csid: u8, len: u32) -> Self {
        let l = len.min(MAX_MESSAGE).to_be_bytes();
        let header = [csid & 0x3f, 0, 0, 0, l[1], l[2], l[3], 20, 0, 0, 0, 0];
        EndlessMessage {
            header,
            header_sent: 0,
            len: len.min(MAX_MESSAGE),
            body_sent: 0,
            need_continuation: false,
            csid,
        }
    }

    /// Completes the chunk under way (so another chunk stream may be interleaved after
    /// it), short of the message's last byte.
    pub fn finish_chunk(&mut self, out: &mut Vec<u8>) {
        if self.header_sent < self.header.len() || self.need_continuation || self.body_sent + 1 >= self.len {
            return;
        }
        let to_boundary = CHUNK - self.body_sent % CHUNK;
        let take = to_boundary.min(self.len - 1 - self.body_sent);
        out.resize(out.len() + take as usize, 0);
        self.body_sent += take;
        if self.body_sent.is_multiple_of(CHUNK) {
            self.need_continuation = true;
        }
    }

    /// Appends up to `n` more bytes of the stream to `out`; fewer when the message is one
    /// byte from complete.
    pub fn fill(&mut self, n: usize, out: &mut Vec<u8>) {
        let goal = out.len() + n;
        while out.len() < goal {
            if self.header_sent < self.header.len() {
                out.push(self.header[self.header_sent]);
                self.header_sent += 1;
            } else if self.body_sent + 1 >= self.len {
                return;
            } else if self.need_continuation {
                out.push(0xC0 | (self.csid & 0x3f));
                self.need_continuation = false;
            } else {
                let to_boundary = CHUNK - self.body_sent % CHUNK;
                let left = self.len - 1 - self.body_sent;
                let take = (goal - out.len()).min(to_boundary as usize).min(left as usize);
                out.resize(out.len() + take, 0);
                self.body_sent += take as u32;
                if self.body_sent.is_multiple_of(CHUNK) {
                    self.need_continuation = true;
                }
            }
        }
    }
}

async fn rtmp_handshake(s: &mut TcpStream) -> anyhow::Result<usize> {
    let (mut hs, c0c1) = Handshake::client()?;
    s.write_all(&c0c1).await?;
    let mut sent = c0c1.len();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed during the handshake");
        match hs.feed(&buf[..n])? {
            Progress::InProgress { send } => {
                s.write_all(&send).await?;
                sent += send.len();
            }
            Progress::Done { send, .. } => {
                s.write_all(&send).await?;
                return Ok(sent + send.len());
            }
        }
    }
}

/// Waits until the server closes `s` or the attack stops; true when the server closed.
async fn closed_or_stopped(s: &mut TcpStream, stop: &mut Stop, until: Option<Duration>) -> Option<bool> {
    let mut buf = [0u8; 4096];
    let wait = async {
        match until {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(wait);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(true),
                Ok(_) => {}
            },
            _ = stop.wait() => return Some(false),
            _ = &mut wait => return None,
        }
    }
}

/// `rtmp-drip`, `rtmp-half-open`, `rtmp-partial`: connections held as long as the
/// server lets them.
pub(super) async fn hold(kind: AttackKind, target: SocketAddr, params: &AttackParams, tally: &Arc<Tally>, stop: Stop) {
    let mut tasks = Vec::new();
    for i in 0..params.connections {
        let (tally, mut stop, p) = (tally.clone(), stop.clone(), params.clone());
        tasks.push(tokio::spawn(async move {
            if !stop.sleep(start_delay(i, p.rate)).await {
                return;
            }
            // Half-open handshakes are closed at the handshake timeout: the attacker
            // opens another at once, to keep its share of the connections.
            loop {
                let Some((mut s, mut guard)) = connect(target, p.source, &tally).await else { return };
                let mut out = Vec::new();
                let setup = async {
                    match kind {
                        AttackKind::RtmpHalfOpen => {
                            // C0 and a tenth of C1.
                            let mut c0c1 = vec![3u8; 1 + 153];
                            c0c1[1..].iter_mut().enumerate().for_each(|(j, b)| *b = (j * 7) as u8);
                            s.write_all(&c0c1).await?;
                            Ok(c0c1.len())
                        }
                        _ => tokio::time::timeout(ATTEMPT_TIMEOUT, rtmp_handshake(&mut s)).await?,
                    }
                };
                match setup.await {
                    Ok(n) => tally.sent(n),
                    Err(e) => {
                        tally.outcome(format!("handshake: {}", short(&e.to_string())));
                        return;
                    }
                }
                let by_server = match kind {
                    AttackKind::RtmpDrip => {
                        let mut msg = EndlessMessage::new(3, 4096);
                        loop {
                            out.clear();
                            msg.fill(DRIP_BYTES, &mut out);
                            if out.is_empty() {
                                msg = EndlessMessage::new(4, 4096);
                                msg.fill(DRIP_BYTES, &mut out);
                            }
                            if s.write_all(&out).await.is_err() {
                                break true;
                            }
                            tally.sent(out.len());
                            match closed_or_stopped(&mut s, &mut stop, Some(p.interval.max(Duration::from_millis(100))))
                                .await
                            {
                                Some(by_server) => break by_server,
                                None => continue,
                            }
                        }
                    }
                    AttackKind::RtmpPartial => {
                        let mut msgs: Vec<EndlessMessage> =
                            (0..PARTIAL_STREAMS).map(|c| EndlessMessage::new(3 + c as u8, MAX_MESSAGE)).collect();
                        let mut budget = p.partial_bytes;
                        let mut broke = false;
                        'send: while budget > 0 && !stop.done() {
                            for m in &mut msgs {
                                out.clear();
                                m.fill(WRITE_BLOCK.min(budget as usize), &mut out);
                                m.finish_chunk(&mut out);
                                if out.is_empty() {
                                    continue;
                                }
                                let w = tokio::select! {
                                    w = s.write_all(&out) => w,
                                    _ = stop.wait() => break 'send,
                                };
                                if w.is_err() {
                                    broke = true;
                                    break 'send;
                                }
                                tally.sent(out.len());
                                budget = budget.saturating_sub(out.len() as u64);
                            }
                            if msgs.iter().all(|m| m.body_sent + 1 >= m.len) {
                                break;
                            }
                        }
                        if broke {
                            true
                        } else {
                            closed_or_stopped(&mut s, &mut stop, None).await.unwrap_or(false)
                        }
                    }
                    _ => closed_or_stopped(&mut s, &mut stop, None).await.unwrap_or(false),
                };
                if by_server {
                    tally.outcome("closed by the server");
                } else {
                    guard.held();
                    tally.outcome("held");
                }
                if kind != AttackKind::RtmpHalfOpen || stop.done() {
                    return;
                }
            }
        }));
    }
    join(tasks, tally).await;
}

/// An error as an outcome key: its start, digits masked so that one kind of error is
/// one key whatever stream or port it names.
fn short(s: &str) -> String {
    s.chars().take(100).map(|c| if c.is_ascii_digit() { 'N' } else { c }).collect()
}

/// `publishes`: one publish per connection of a distinct stream, held until the end.
/// Uses the product's bench client, which does not bind a source address.
pub(super) async fn publishes(target: SocketAddr, params: &AttackParams, tally: &Arc<Tally>, stop: Stop) {
    let mut tasks = Vec::new();
    for i in 0..params.connections {
        let (tally, mut stop, rate, source) = (tally.clone(), stop.clone(), params.rate, params.source);
        tasks.push(tokio::spawn(async move {
            if !stop.sleep(start_delay(i, rate)).await {
                return;
            }
            let attempt = async {
                // From the attacker's own address, like every other attack: from the
                // harness's, a ban would also shut out the probes and the canary.
                let mut c = match source {
                    Some(ip) => RtmpClient::connect_from(target, "live", ip).await?,
                    None => RtmpClient::connect(target, "live").await?,
                };
                c.publish(&format!("pubflood-{i}")).await?;
                anyhow::Ok(c)
            };
            tally.request();
            let mut c = tokio::select! {
                r = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt) => match r {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return tally.outcome(format!("refused: {}", short(&format!("{e:#}")))),
                    Err(_) => return tally.outcome("timeout"),
                },
                _ = stop.wait() => return,
            };
            tally.opened();
            tally.outcome("published");
            let by_server = loop {
                tokio::select! {
                    e = c.next_event() => if !matches!(e, Ok(Some(_))) { break true },
                    _ = stop.wait() => break false,
                }
            };
            tally.closed(by_server);
        }));
    }
    join(tasks, tally).await;
}

/// `link-drip`: a control frame header announcing a small Hello, then one byte of it per
/// interval. `link-oversized`: a media frame of `partial_bytes` (at most 16 MiB) before
/// any Hello; a finding when it was all accepted and the connection stayed open.
pub(super) async fn link(kind: AttackKind, target: SocketAddr, params: &AttackParams, tally: &Arc<Tally>, stop: Stop) {
    let mut tasks = Vec::new();
    for i in 0..params.connections {
        let (tally, mut stop, p) = (tally.clone(), stop.clone(), params.clone());
        tasks.push(tokio::spawn(async move {
            if !stop.sleep(start_delay(i, p.rate)).await {
                return;
            }
            let Some((mut s, mut guard)) = connect(target, p.source, &tally).await else { return };
            let by_server = if kind == AttackKind::LinkDrip {
                let mut frame = vec![0, 0, 0, 200, 0x01];
                frame.resize(4 + 200, 0x2a);
                let mut at = 0;
                loop {
                    let n = if at == 0 { 5 } else { 1 };
                    let Some(bytes) = frame.get(at..at + n) else { break false };
                    if s.write_all(bytes).await.is_err() {
                        break true;
                    }
                    tally.sent(n);
                    at += n;
                    match closed_or_stopped(&mut s, &mut stop, Some(p.interval.max(Duration::from_millis(100)))).await {
                        Some(b) => break b,
                        None => continue,
                    }
                }
            } else {
                let body = p.partial_bytes.min(16 * 1024 * 1024) as usize;
                let mut head = ((body + 1) as u32).to_be_bytes().to_vec();
                head.push(0x02);
                let block = vec![0u8; WRITE_BLOCK];
                let sent = async {
                    s.write_all(&head).await?;
                    let mut left = body;
                    while left > 0 {
                        let n = left.min(WRITE_BLOCK);
                        s.write_all(&block[..n]).await?;
                        left -= n;
                    }
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(ATTEMPT_TIMEOUT * 3, sent).await {
                    Ok(Ok(())) => {
                        tally.sent(body + 5);
                        match closed_or_stopped(&mut s, &mut stop, Some(Duration::from_secs(2))).await {
                            Some(true) => {
                                tally.finding(format!(
                                    "a {body}-byte frame before Hello was read in whole before closing"
                                ));
                                true
                            }
                            _ => {
                                tally.finding(format!("a {body}-byte frame before Hello was taken in whole"));
                                false
                            }
                        }
                    }
                    Ok(Err(_)) => {
                        tally.outcome("closed before the end of the frame");
                        true
                    }
                    Err(_) => {
                        tally.outcome("stalled (not read)");
                        false
                    }
                }
            };
            if by_server {
                tally.outcome("closed by the server");
            } else {
                guard.held();
                tally.outcome("held");
            }
        }));
    }
    join(tasks, tally).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_message_puts_a_continuation_header_every_chunk_and_never_completes() {
        let mut m = EndlessMessage::new(3, 300);
        let mut out = Vec::new();
        m.fill(10_000, &mut out);
        // 12-byte header, 299 body bytes (one short of 300), continuation headers
        // after body bytes 128 and 256.
        assert_eq!(out.len(), 12 + 299 + 2);
        assert_eq!(&out[..1], &[0x03]);
        assert_eq!(out[12 + 128], 0xC3);
        assert_eq!(out[12 + 128 + 1 + 128], 0xC3);
        let before = out.len();
        m.fill(100, &mut out);
        assert_eq!(out.len(), before, "the last byte is never sent");
    }

    #[test]
    fn a_finished_chunk_ends_on_a_boundary_so_streams_can_interleave() {
        let mut m = EndlessMessage::new(3, 1000);
        let mut out = Vec::new();
        m.fill(12 + 50, &mut out);
        m.finish_chunk(&mut out);
        assert_eq!(out.len(), 12 + 128);
        m.finish_chunk(&mut out);
        assert_eq!(out.len(), 12 + 128, "already on a boundary");
        m.fill(1, &mut out);
        assert_eq!(out.last(), Some(&0xC3));
    }

    #[test]
    fn a_drip_is_sixteen_bytes_at_a_time() {
        let mut m = EndlessMessage::new(3, 4096);
        let mut out = Vec::new();
        m.fill(DRIP_BYTES, &mut out);
        assert_eq!(out.len(), DRIP_BYTES);
        out.clear();
        m.fill(DRIP_BYTES, &mut out);
        assert_eq!(out, vec![0; DRIP_BYTES]);
    }
}
