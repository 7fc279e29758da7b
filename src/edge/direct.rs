//! A plain-TCP RTMP connection's socket as the direct fan-out writes to it
//! ([`crate::media::fanout`]), and the socket halves that let the connection task and
//! the fan-out share it.
//!
//! The connection lends its socket ([`DirectSocket::lend`]) when it has nothing of its
//! own to write, and takes it back ([`DirectSocket::take_back`]) before it writes
//! anything (a control message, a shared-object update, the end of a play), or when a
//! fan-out write left bytes the socket did not take (the "spill", which it then writes
//! first). Only the side holding the socket writes; the lock makes the hand-over exact.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::EdgeContext;
use crate::media::fanout::{DirectOut, Merge, Written};
use crate::media::{Frame, FrameKind};
use crate::rtmp::chunk::RawMessage;
use crate::rtmp::message;
use crate::rtmp::session::{prechunk, CSID_AUDIO, CSID_DATA, CSID_VIDEO};

/// Buffers handed to one vectored write.
const WRITE_SLICES: usize = 64;
/// Room for more buffers than this is given back after a write (a GOP burst).
const SHRINK_ABOVE: usize = 16;

/// The reading half of a TCP socket whose writing half is shared ([`SharedWriter`]).
pub struct SharedReader(pub(crate) Arc<TcpStream>);

/// The writing half of a TCP socket the direct fan-out may also write to (never at
/// the same time: see the module).
pub struct SharedWriter(pub(crate) Arc<TcpStream>);

impl AsyncRead for SharedReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                // Readiness is cleared: the next poll registers for the next event.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// A connection's socket as the fan-out sees it.
pub(crate) struct DirectSocket {
    socket: Arc<TcpStream>,
    ctx: Arc<EdgeContext>,
    chunk_size: u32,
    /// `Owner::lent`, readable without the lock.
    lent: AtomicBool,
    owner: Mutex<Owner>,
    /// Notified when a fan-out write spilled: the connection takes its socket back.
    spilled: Notify,
    taken_back: Notify,
}

#[derive(Default)]
struct Owner {
    lent: bool,
    /// What the socket did not take of the last fan-out write.
    spill: Vec<Bytes>,
    /// Reused for every write.
    bufs: Vec<Bytes>,
    arrivals: Vec<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirectSocket {
    pub(crate) fn new(socket: Arc<TcpStream>, ctx: Arc<EdgeContext>, chunk_size: u32) -> DirectSocket {
        DirectSocket {
            socket,
            ctx,
            chunk_size,
            lent: AtomicBool::new(false),
            owner: Mutex::default(),
            spilled: Notify::new(),
            taken_back: Notify::new(),
        }
    }

    /// The fan-out may write from now on.
    pub(crate) fn lend(&self) {
        let mut owner = lock(&self.owner);
        owner.lent = true;
        self.lent.store(true, Ordering::Release);
    }

    /// The connection writes from now on: what a fan-out write left unwritten comes
    /// first. Readers waiting while their frames were the fan-out's take them again.
    pub(crate) fn take_back(&self) -> Vec<Bytes> {
        let mut owner = lock(&self.owner);
        owner.lent = false;
        self.lent.store(false, Ordering::Release);
        let spill = std::mem::take(&mut owner.spill);
        drop(owner);
        self.taken_back.notify_waiters();
        spill
    }

    /// Resolves when a fan-out write gave the socket back with bytes unwritten.
    pub(crate) async fn spilled(&self) {
        self.spilled.notified().await
    }

    pub(crate) fn chunk_size(&self) -> u32 {
        self.chunk_size
    }
}

impl DirectOut for DirectSocket {
    fn is_lent(&self) -> bool {
        self.lent.load(Ordering::Acquire)
    }

    fn write(&self, tag: u32, next: &mut dyn FnMut() -> Option<Frame>) -> Written {
        let mut guard = lock(&self.owner);
        let owner = &mut *guard;
        if !owner.lent {
            return Written::Held;
        }
        owner.bufs.clear();
        owner.arrivals.clear();
        while let Some(frame) = next() {
            if let Some(bytes) = chunks(&frame, self.chunk_size, tag) {
                owner.bufs.push(bytes);
                owner.arrivals.push(frame.arrived.0);
            }
        }
        if owner.bufs.is_empty() {
            return Written::Done;
        }
        let (mut first, mut written) = (0, 0usize);
        let spilled = loop {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let n = slices.len().min(owner.bufs.len() - first);
            for (slot, b) in slices.iter_mut().zip(&owner.bufs[first..first + n]) {
                *slot = IoSlice::new(b);
            }
            match self.socket.try_write_vectored(&slices[..n]) {
                Ok(mut took) if took > 0 => {
                    written += took;
                    while took > 0 {
                        let front = &mut owner.bufs[first];
                        if took < front.len() {
                            front.advance(took);
                            break;
                        }
                        took -= front.len();
                        first += 1;
                    }
                    if first == owner.bufs.len() {
                        break false;
                    }
                }
                // Would block, or an error the connection's own write will meet.
                _ => break true,
            }
        };
        let stats = &self.ctx.stats;
        stats.bytes_out.fetch_add(written as u64, Ordering::Relaxed);
        let now = Instant::now();
        for arrived in owner.arrivals.drain(..) {
            stats.hop_delivery.observe(now.saturating_duration_since(arrived));
        }
        if spilled {
            owner.spill.extend(owner.bufs.drain(first..));
            owner.lent = false;
            self.lent.store(false, Ordering::Release);
        }
        owner.bufs.clear();
        if owner.bufs.capacity() > SHRINK_ABOVE {
            owner.bufs.shrink_to(0);
            owner.arrivals.shrink_to(0);
        }
        drop(guard);
        if spilled {
            stats.direct_spills.fetch_add(1, Ordering::Relaxed);
            self.spilled.notify_one();
            Written::Spilled
        } else {
            stats.direct_writes.fetch_add(1, Ordering::Relaxed);
            Written::Done
        }
    }

    fn merge(&self) -> Merge {
        self.ctx.stats.load.merge(self.ctx.config.write_merge)
    }

    fn taken_back(&self) -> &Notify {
        &self.taken_back
    }
}

/// The frame's chunks for a player, shared with every player of the stream using the
/// same chunk size and message stream id.
pub(super) fn chunks(frame: &Frame, chunk_size: u32, stream_id: u32) -> Option<Bytes> {
    let (csid, type_id) = match frame.kind {
        FrameKind::Audio => (CSID_AUDIO, message::AUDIO),
        FrameKind::Video => (CSID_VIDEO, message::VIDEO),
        FrameKind::Data => (CSID_DATA, message::DATA_AMF0),
    };
    let bytes = frame.wire.rtmp(chunk_size, stream_id, || {
        let msg = RawMessage { csid, timestamp: frame.timestamp, type_id, stream_id, payload: frame.payload.clone() };
        prechunk(&msg, chunk_size).unwrap_or_default()
    });
    (!bytes.is_empty()).then_some(bytes)
}
