//! Direct fan-out: a stream's frames written to its players' sockets by a few shard
//! tasks instead of waking every player's connection task for every frame.
//!
//! A player whose connection has nothing of its own to send (no control message, no
//! bytes waiting for the socket, no merge hold) lends its socket to the fan-out: its hub
//! reader goes on queueing frames as before, but [`Hub::publish`](super::hub::Hub)
//! wakes the reader's shard instead of the reader. The shard takes the queued frames
//! of every lending player of its part of the stream and writes each player's with one
//! non-blocking vectored write ([`DirectOut::write`]). A write the socket does not take
//! whole gives the socket back: the rest is handed to the connection (its "spill"),
//! which writes it through its own outbox and lends the socket again once it has
//! nothing left. The connection takes the socket back the same way whenever it has
//! something of its own to send; only the side that holds the socket writes.
//!
//! Per frame, a stream costs one wakeup per shard (one per runtime worker at most),
//! not one per player. The adaptive merge (`edge::rtmp_conn`) is kept, stream-wide:
//! a shard writes as soon as a frame other than plain audio is queued, and plain audio
//! waits for the next video frame, at most the audio hold (none while the edge is
//! lightly loaded); under load every frame waits for the load's window ([`Merge`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::frame::Frame;

/// How a shard gathers a stream's frames into writes (the edge's merge setting, asked
/// at every write so that a load-dependent window applies at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merge {
    /// Plain audio waits this long at most for the next video frame.
    pub audio_hold: Duration,
    /// When not zero: every frame waits this long from the first one unwritten.
    pub window: Duration,
}

/// What happened to a direct write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Every frame taken was written (or none was queued).
    Done,
    /// The connection holds its socket: nothing was taken.
    Held,
    /// The socket did not take everything: the connection has the rest and its socket
    /// back.
    Spilled,
}

/// A connection's socket as the fan-out writes to it (implemented by the edge's RTMP
/// connections over plain TCP). One per connection, shared by its plays.
pub trait DirectOut: Send + Sync + 'static {
    /// Whether the connection lends its socket now (a hint read without a lock: the
    /// answer of [`DirectOut::write`] is what counts).
    fn is_lent(&self) -> bool;
    /// Under the connection's lock: when the socket is lent, takes frames from `next`
    /// until it gives none and writes them for the play `tag` without blocking.
    fn write(&self, tag: u32, next: &mut dyn FnMut() -> Option<Frame>) -> Written;
    /// The merge that applies now.
    fn merge(&self) -> Merge;
    /// Notified when the connection takes its socket back (a reader waiting while its
    /// frames belonged to the fan-out then takes them itself).
    fn taken_back(&self) -> &Notify;
}

/// A hub reader as its shard sees it (implemented by the hub's readers).
pub(crate) trait Queued: Send + Sync + 'static {
    fn id(&self) -> u64;
    /// The oldest frame queued.
    fn pop(&self) -> Option<Frame>;
    /// Frames queued.
    fn backlog(&self) -> usize;
    /// The stream ended or the reader was closed.
    fn is_ended(&self) -> bool;
    /// Wakes the task reading it (its connection).
    fn wake(&self);
}

/// A reader lent to the fan-out: its connection's socket and its shard.
pub(crate) struct Direct {
    pub(crate) out: Arc<dyn DirectOut>,
    pub(crate) shard: Arc<Shard>,
}

#[derive(Clone)]
struct Member {
    reader: Arc<dyn Queued>,
    out: Arc<dyn DirectOut>,
    tag: u32,
}

/// One shard of a stream's lending readers, written by one task.
pub(crate) struct Shard {
    state: Mutex<ShardState>,
    wake: Notify,
}

#[derive(Default)]
struct ShardState {
    members: Vec<Member>,
    /// Bumped on every change of `members` (the task keeps its own copy).
    version: u64,
    /// A frame other than plain audio is queued since the last write.
    urgent: bool,
    /// When the first frame queued since the last write arrived.
    since: Option<Instant>,
    /// The hub is gone or ended: the task ends once its members have left.
    stopped: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shard {
    /// A shard and its task (on the current runtime), which ends once the shard is
    /// stopped ([`Shard::stop`]: the hub ended or is gone) and its members have left.
    pub(crate) fn spawn() -> Arc<Shard> {
        let shard = Arc::new(Shard { state: Mutex::default(), wake: Notify::new() });
        tokio::spawn(run(shard.clone()));
        shard
    }

    pub(super) fn join(&self, reader: Arc<dyn Queued>, out: Arc<dyn DirectOut>, tag: u32) {
        let mut state = lock(&self.state);
        state.members.push(Member { reader, out, tag });
        state.version += 1;
    }

    pub(crate) fn leave(&self, reader_id: u64) {
        let mut state = lock(&self.state);
        state.members.retain(|m| m.reader.id() != reader_id);
        state.version += 1;
        drop(state);
        // The task drops its copy of the member (and the socket with it) at once.
        self.wake.notify_one();
    }

    /// A frame was queued for lending members: `audio` says it is plain audio.
    pub(crate) fn queued(&self, audio: bool, arrived: Instant) {
        let mut state = lock(&self.state);
        let mut changed = false;
        if !audio && !state.urgent {
            state.urgent = true;
            changed = true;
        }
        if state.since.is_none() {
            state.since = Some(arrived);
            changed = true;
        }
        drop(state);
        if changed {
            self.wake.notify_one();
        }
    }

    /// Something is queued that should be written now (a reader found frames queued
    /// for the fan-out, the stream ended).
    pub(crate) fn kick(&self) {
        let mut state = lock(&self.state);
        state.urgent = true;
        // A window under load counts from here (not from each time the task looks).
        state.since.get_or_insert_with(Instant::now);
        drop(state);
        self.wake.notify_one();
    }

    pub(crate) fn stop(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        state.urgent = true;
        drop(state);
        self.wake.notify_one();
    }
}

/// What the shard's task does next.
enum Next {
    Write,
    WaitUntil(Instant),
    Wait,
    Stop,
}

/// The shard's task: until the hub is gone or ended and every member has left.
async fn run(shard: Arc<Shard>) {
    let mut members: Vec<Member> = Vec::new();
    let mut version = u64::MAX;
    loop {
        // Registered before the state is read: a change after it wakes the wait below.
        let notified = shard.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let next = {
            let state = lock(&shard.state);
            if state.version != version {
                // A member that left is dropped here, its socket with it.
                members.clone_from(&state.members);
                version = state.version;
            }
            let merge = members.first().map(|m| m.out.merge());
            if state.stopped && state.members.is_empty() {
                Next::Stop
            } else {
                match (state.since, merge) {
                    (None, _) if !state.urgent => Next::Wait,
                    (since, Some(merge)) if !merge.window.is_zero() && !state.stopped => {
                        Next::WaitUntil(since.unwrap_or_else(Instant::now) + merge.window)
                    }
                    (Some(since), Some(merge)) if !state.urgent => Next::WaitUntil(since + merge.audio_hold),
                    _ => Next::Write,
                }
            }
        };
        match next {
            Next::Stop => return,
            Next::WaitUntil(at) if at > Instant::now() => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            Next::Wait => notified.await,
            Next::Write | Next::WaitUntil(_) => {
                {
                    let mut state = lock(&shard.state);
                    state.urgent = false;
                    state.since = None;
                }
                write_all(&members);
            }
        }
    }
}

/// One write per lending member of everything queued for it.
fn write_all(members: &[Member]) {
    for m in members {
        if !m.out.is_lent() {
            // The connection took its socket back after the hub looked: frames the hub
            // queued for the fan-out are its own now.
            if m.reader.backlog() > 0 {
                m.reader.wake();
            }
            continue;
        }
        match m.out.write(m.tag, &mut || m.reader.pop()) {
            Written::Held if m.reader.backlog() > 0 => m.reader.wake(),
            Written::Done if m.reader.is_ended() => m.reader.wake(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::hub::{Hub, HubLimits};
    use crate::media::queue::QueueLimits;
    use bytes::Bytes;
    use futures::FutureExt;
    use std::future::Future;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A socket that takes `room` frames, then would block.
    struct FakeOut {
        lent: AtomicBool,
        room: AtomicUsize,
        written: Mutex<Vec<Vec<u32>>>,
        spilled: Mutex<Vec<u32>>,
        taken_back: Notify,
    }

    impl FakeOut {
        fn new(room: usize) -> Arc<FakeOut> {
            Arc::new(FakeOut {
                lent: AtomicBool::new(true),
                room: AtomicUsize::new(room),
                written: Mutex::default(),
                spilled: Mutex::default(),
                taken_back: Notify::new(),
            })
        }
        fn writes(&self) -> Vec<Vec<u32>> {
            lock(&self.written).clone()
        }
        fn take_back(&self) {
            self.lent.store(false, Ordering::Release);
            self.taken_back.notify_waiters();
        }
    }

    impl DirectOut for FakeOut {
        fn is_lent(&self) -> bool {
            self.lent.load(Ordering::Acquire)
        }
        fn write(&self, _tag: u32, next: &mut dyn FnMut() -> Option<Frame>) -> Written {
            if !self.is_lent() {
                return Written::Held;
            }
            let frames: Vec<u32> = std::iter::from_fn(next).map(|f| f.timestamp).collect();
            let room = self.room.load(Ordering::Acquire);
            if frames.len() > room {
                self.room.store(0, Ordering::Release);
                lock(&self.written).push(frames[..room].to_vec());
                lock(&self.spilled).extend(&frames[room..]);
                self.lent.store(false, Ordering::Release);
                return Written::Spilled;
            }
            self.room.fetch_sub(frames.len(), Ordering::AcqRel);
            if !frames.is_empty() {
                lock(&self.written).push(frames);
            }
            Written::Done
        }
        fn merge(&self) -> Merge {
            Merge { audio_hold: Duration::from_millis(50), window: Duration::ZERO }
        }
        fn taken_back(&self) -> &Notify {
            &self.taken_back
        }
    }

    fn video(ts: u32, key: bool) -> Frame {
        Frame::video(ts, Bytes::from(vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0, 1]))
    }

    fn audio(ts: u32) -> Frame {
        Frame::audio(ts, Bytes::from_static(&[0xAF, 0x01, 7]))
    }

    fn flag_waker() -> (std::task::Waker, Arc<AtomicBool>) {
        struct Flag(Arc<AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::Release);
            }
        }
        let flag = Arc::new(AtomicBool::new(false));
        (std::task::Waker::from(Arc::new(Flag(flag.clone()))), flag)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_lending_reader_s_frames_are_written_by_its_shard_without_waking_it() {
        let hub =
            Hub::new(HubLimits { queue: QueueLimits { max_frames: 64, max_bytes: usize::MAX }, ..Default::default() });
        let sub = hub.subscribe();
        let out = FakeOut::new(usize::MAX);
        sub.lend(out.clone(), 1);
        let mut next = Box::pin(sub.recv());
        let (waker, woken) = flag_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(next.as_mut().poll(&mut cx).is_pending(), "a lending reader takes no frame itself");

        hub.publish(video(0, true));
        settle().await;
        assert_eq!(out.writes(), vec![vec![0]], "video is written at once, by the shard");
        // Audio waits for the next video frame, and both go in one write.
        hub.publish(audio(10));
        hub.publish(audio(20));
        settle().await;
        assert_eq!(out.writes().len(), 1, "audio alone is held");
        hub.publish(video(33, false));
        settle().await;
        assert_eq!(out.writes(), vec![vec![0], vec![10, 20, 33]]);
        // Audio with no video after it goes once the hold is over.
        hub.publish(audio(40));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(out.writes().last(), Some(&vec![40]), "held audio is written after the hold");
        assert!(!woken.load(Ordering::Acquire), "the reader was never woken");

        // Taken back: the reader takes the frames again.
        out.take_back();
        assert!(woken.load(Ordering::Acquire), "taking the socket back wakes the reader");
        hub.publish(video(66, false));
        assert_eq!(next.await.map(|f| f.timestamp), Some(66));
        assert_eq!(out.writes().len(), 3, "nothing more written by the shard");
    }

    #[tokio::test]
    async fn a_write_the_socket_does_not_take_whole_hands_the_rest_and_what_follows_to_the_reader() {
        let hub =
            Hub::new(HubLimits { queue: QueueLimits { max_frames: 64, max_bytes: usize::MAX }, ..Default::default() });
        let sub = hub.subscribe();
        let out = FakeOut::new(2);
        sub.lend(out.clone(), 1);
        hub.publish(video(0, true));
        settle().await;
        hub.publish(audio(10));
        hub.publish(video(33, false));
        settle().await;
        assert_eq!(out.writes(), vec![vec![0], vec![10]], "the socket took two frames");
        assert_eq!(*lock(&out.spilled), vec![33], "the rest is the connection's");
        assert!(!out.is_lent());
        // Frames queued after the spill go to the reader, in order.
        hub.publish(audio(40));
        let next = sub.recv().now_or_never().flatten().map(|f| f.timestamp);
        assert_eq!(next, Some(40), "audio queued after the spill");
        hub.publish(video(66, false));
        assert_eq!(sub.recv().await.map(|f| f.timestamp), Some(66));
    }

    #[tokio::test]
    async fn the_end_of_the_stream_reaches_a_lending_reader_after_its_last_frames_are_written() {
        let hub = Hub::new(HubLimits::default());
        let sub = hub.subscribe();
        let out = FakeOut::new(usize::MAX);
        sub.lend(out.clone(), 1);
        hub.publish(video(0, true));
        hub.publish(audio(10));
        hub.end();
        let end = tokio::time::timeout(Duration::from_secs(2), sub.recv()).await;
        assert_eq!(end.map(|f| f.is_none()), Ok(true), "the reader sees the end");
        assert_eq!(out.writes().concat(), vec![0, 10], "after every frame was written");
    }
}
