//! The per-stream fan-out hub: one publisher pushes frames, any number of readers
//! subscribe. A new reader starts from the GOP cache; each reader has its own bounded
//! queue, so a slow one only loses its own frames.
//!
//! Publishing never waits: it takes the hub's lock, appends to each reader's queue
//! (each under its own short lock) and wakes the reader. No lock is held across an
//! `.await`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use super::fanout::{Direct, DirectOut, Queued, Shard};
use super::frame::Frame;
use super::frame::FrameKind;
use super::gop::{GopCache, GopLimits};
use super::queue::{Queue, QueueLimits};
use super::retain::{RetainLimits, Retained};
use super::segments::{SegmentWindow, WindowLimits};
use crate::hls::mark::Continuation;

/// How far before a resuming reader's point a live frame may be and still be taken for
/// one the reader has (a re-send): a publishing edge re-sends at most 30 s
/// (`RetainLimits::default`), so a frame further back means the timestamps started
/// over (a new session on the same hub, the 32-bit wrap) and the reader's point no
/// longer applies to that kind.
const RESUME_SPAN_MS: u32 = 60_000;

/// Limits of a hub and of each of its readers.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubLimits {
    pub gop: GopLimits,
    pub queue: QueueLimits,
    /// Keep this much history for readers that resume after an owner change
    /// ([`Hub::subscribe_after`]); `None`: no history (edge hubs).
    pub history: Option<RetainLimits>,
    /// Keep the frames of the last HLS segments for readers that start late
    /// ([`Hub::subscribe_window`]); `None`: no window. Also the bounds of a window
    /// started later ([`Hub::start_window`]) on a hub whose window was stopped.
    pub window: Option<WindowLimits>,
}

/// Where a resuming reader left off: the publisher's timestamps of the last audio and
/// video frames it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResumePoint {
    pub audio: Option<u32>,
    pub video: Option<u32>,
}

impl ResumePoint {
    /// Whether the reader still needs `frame`.
    fn wants(&self, frame: &Frame) -> bool {
        let after = match frame.kind {
            FrameKind::Audio => self.audio,
            FrameKind::Video => self.video,
            FrameKind::Data => self.video.or(self.audio),
        };
        after.is_none_or(|ts| frame.timestamp > ts)
    }

    /// For a live frame: whether the reader may already have it (a timestamp before
    /// the point of its kind; equal timestamps pass, the relay tells them apart by
    /// content). A frame past the point, or too far before it to be a re-send
    /// ([`RESUME_SPAN_MS`]), ends the check for its kind, so timestamps are compared
    /// only until the stream has moved beyond where the reader was.
    fn passed(&mut self, frame: &Frame) -> bool {
        let slot = match frame.kind {
            FrameKind::Audio => &mut self.audio,
            FrameKind::Video => &mut self.video,
            FrameKind::Data => return true,
        };
        match *slot {
            Some(ts) if frame.timestamp < ts && ts - frame.timestamp <= RESUME_SPAN_MS => false,
            Some(ts) => {
                if frame.timestamp != ts {
                    *slot = None;
                }
                true
            }
            None => true,
        }
    }

    fn is_empty(&self) -> bool {
        self.audio.is_none() && self.video.is_none()
    }
}

/// One stream's hub.
pub struct Hub {
    limits: HubLimits,
    state: Mutex<HubState>,
    /// Frames dropped from any reader's queue, counted as they are dropped (a reader
    /// stuck on a slow socket never looks at its own counter).
    drops: Arc<AtomicU64>,
    /// Set once the history an origin sends ahead of the live stream is all here
    /// ([`Hub::end_history`]); HLS readers wait for it so a late edge's window is
    /// complete before its first playlist.
    history_done: AtomicBool,
    history_notify: Notify,
    /// The direct fan-out's shards, made when the first reader lends its socket
    /// ([`Subscription::lend`]).
    shards: OnceLock<Vec<Arc<Shard>>>,
}

/// Shards of a stream's direct fan-out at most (one per runtime worker).
const MAX_SHARDS: usize = 64;

struct HubState {
    gop: GopCache,
    history: Option<Retained>,
    window: Option<SegmentWindow>,
    /// While a window started late waits for the earlier frames
    /// ([`Hub::start_window`] until [`Hub::splice_window`]): the frames published since.
    tail: Option<Tail>,
    /// The window went to the reader that packages the stream ([`Hub::take_window`]):
    /// none is kept or started until [`Hub::stop_window`].
    handed_over: bool,
    /// Where the HLS numbering of the frames published so far stands.
    last_mark: Option<Continuation>,
    /// The last frame published (where a window started late joins what came before).
    last: Option<Frame>,
    readers: Vec<Entry>,
    next_id: u64,
    ended: bool,
}

/// A reader as the hub's state holds it.
struct Entry {
    reader: Arc<Reader>,
    /// A reader that resumed ([`Hub::subscribe_after`]) skips live frames older than
    /// where it was, per kind, until the stream passes that point: after an owner
    /// change the publishing edge re-sends everything it retained (up to the whole HLS
    /// window), and queueing what the reader already has would overflow its queue and
    /// skip past frames it lacks.
    after: Option<ResumePoint>,
}

struct Reader {
    id: u64,
    queue: Mutex<Queue>,
    wake: Notify,
    ended: AtomicBool,
    /// Also gets frames published as history ([`Hub::publish_history`]).
    window: bool,
    /// While its gate holds, audio frames are queued without waking the reader.
    gate: OnceLock<Arc<AudioGate>>,
    /// Its connection's socket and its shard, once it lends its socket to the fan-out.
    direct: OnceLock<(Direct, usize)>,
}

impl Queued for Reader {
    fn id(&self) -> u64 {
        self.id
    }

    fn pop(&self) -> Option<Frame> {
        lock(&self.queue).pop()
    }

    fn backlog(&self) -> usize {
        lock(&self.queue).len()
    }

    fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Reader {
    /// Its direct fan-out while the socket is lent.
    fn lent(&self) -> Option<&Direct> {
        self.direct.get().map(|(d, _)| d).filter(|d| d.out.is_lent())
    }
}

/// Lets a reader sleep through audio frames: while the gate holds, an audio frame is
/// queued for the reader but does not wake it; any other frame does, and so does
/// [`AudioGate::open`]. A connection that gathers a player's audio until the next
/// video frame (`edge::rtmp_conn`'s adaptive write merge) holds the gate meanwhile: it
/// is woken once per video frame instead of once per frame. One gate may serve every
/// reader of a connection; it is opened and held by the task that polls them.
#[derive(Debug, Default)]
pub struct AudioGate {
    held: AtomicBool,
    kick: Notify,
}

impl AudioGate {
    /// Audio frames stop waking the gated readers.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Audio frames wake the gated readers again, and a reader waiting now wakes to take
    /// what was queued meanwhile.
    pub fn open(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.kick.notify_waiters();
        }
    }

    pub fn holds(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }
}

/// A reader's end of a hub. Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    reader: Arc<Reader>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the stream down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub fn new(limits: HubLimits) -> Arc<Hub> {
        Self::with_drop_counter(limits, Arc::default())
    }

    /// A hub adding every reader's drops to `drops` (shared by many hubs for a total).
    pub fn with_drop_counter(limits: HubLimits, drops: Arc<AtomicU64>) -> Arc<Hub> {
        Arc::new(Hub {
            limits,
            drops,
            history_done: AtomicBool::new(false),
            history_notify: Notify::new(),
            shards: OnceLock::new(),
            state: Mutex::new(HubState {
                gop: GopCache::new(limits.gop),
                history: limits.history.map(Retained::new),
                window: limits.window.map(SegmentWindow::new),
                tail: None,
                handed_over: false,
                last_mark: None,
                last: None,
                readers: Vec::new(),
                next_id: 0,
                ended: false,
            }),
        })
    }

    /// The history ahead of the live stream is complete (the link's `WindowEnd`).
    /// Ignored while the hub keeps no window: a `WindowEnd` that arrives after the
    /// window was stopped must not let a later window's reader start before that
    /// window's earlier frames are here.
    pub fn end_history(&self) {
        let state = lock(&self.state);
        if state.window.is_none() && state.tail.is_none() {
            return;
        }
        drop(state);
        self.history_done.store(true, Ordering::Release);
        self.history_notify.notify_waiters();
    }

    /// Resolves once [`Hub::end_history`] was called (at once if it was).
    pub async fn history_ended(&self) {
        loop {
            let notified = self.history_notify.notified();
            if self.history_done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Delivers a frame to every reader and the GOP cache. Never blocks on readers.
    pub fn publish(&self, frame: Frame) {
        self.deliver(frame, false)
    }

    /// Records a frame that precedes the live stream (the HLS window an origin sends
    /// a new relay ahead of its live start): kept in the window and the GOP cache and
    /// given only to window readers ([`Hub::subscribe_window`]), never to players,
    /// which start at the live GOP; headers excepted, which every reader gets.
    pub fn publish_history(&self, frame: Frame) {
        self.deliver(frame, true)
    }

    fn deliver(&self, frame: Frame, history_only: bool) {
        let mut state = lock(&self.state);
        if state.ended {
            return;
        }
        state.gop.push(&frame);
        if let Some(history) = &mut state.history {
            history.push(frame.clone(), true);
        }
        if let Some(window) = &mut state.window {
            window.push(&frame);
        }
        let tail_over = state.tail.as_mut().is_some_and(|tail| {
            tail.bytes += frame.cost();
            tail.frames.push(frame.clone());
            tail.bytes > self.limits.window.map_or(0, |w| w.max_bytes)
        });
        if tail_over {
            // The earlier frames are taking too long: the window starts with what came
            // since (the tail is never held past the window's own bound).
            tracing::debug!("HLS window tail over its bound; starting the window from it");
            Self::join_window(&mut state, self.limits, Vec::new());
            self.history_done.store(true, Ordering::Release);
            self.history_notify.notify_waiters();
        }
        if let Some(mark) = &frame.hls {
            state.last_mark = Continuation::after(state.last_mark, mark);
        }
        state.last = Some(frame.clone());
        let start = state.gop.is_start(&frame);
        // Headers of the history go to every reader: a player already waiting needs
        // them, and the relay's continuity drops their live repeat as unchanged.
        let everyone = !history_only || frame.header;
        // Shards (by index) with a lending reader this frame was queued for.
        let mut lent_shards = 0u64;
        for entry in state.readers.iter_mut().filter(|e| e.reader.window || everyone) {
            if !frame.header {
                if let Some(after) = &mut entry.after {
                    let wanted = after.passed(&frame);
                    if after.is_empty() {
                        entry.after = None;
                    }
                    if !wanted {
                        continue;
                    }
                }
            }
            let reader = &entry.reader;
            let mut queue = lock(&reader.queue);
            let before = queue.dropped();
            queue.push(frame.clone(), start);
            let dropped = queue.dropped() - before;
            drop(queue);
            if dropped > 0 {
                self.drops.fetch_add(dropped, Ordering::Relaxed);
            }
            if let Some((_, index)) = reader.direct.get().filter(|(d, _)| d.out.is_lent()) {
                lent_shards |= 1 << index;
                continue;
            }
            let quiet = frame.is_plain_audio() && dropped == 0 && reader.gate.get().is_some_and(|gate| gate.holds());
            if !quiet {
                reader.wake.notify_one();
            }
        }
        if lent_shards != 0 {
            let shards = self.shards.get().map_or(&[][..], Vec::as_slice);
            for (i, shard) in shards.iter().enumerate() {
                if lent_shards & (1 << i) != 0 {
                    shard.queued(frame.is_plain_audio(), frame.arrived.0);
                }
            }
        }
    }

    /// Frames dropped from readers' queues so far (all hubs sharing the counter).
    pub fn drops(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }

    /// Subscribes a new reader, primed with the headers and the current GOP.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribe_after(None).0
    }

    /// Subscribes a reader, primed like [`Hub::subscribe`], whose queue has `queue` for
    /// bounds instead of a player's: a reader that must take a burst whole (a recorder
    /// given a publishing edge's re-sent frames at once after an owner change).
    pub fn subscribe_with_queue(self: &Arc<Self>, queue: QueueLimits) -> Subscription {
        let mut state = lock(&self.state);
        let mut q = Queue::new(queue);
        for frame in state.gop.start_frames() {
            let start = state.gop.is_start(frame);
            q.push(frame.clone(), start);
        }
        let reader = self.add_reader(&mut state, q, false, None);
        Subscription { hub: self.clone(), reader }
    }

    /// Subscribes a reader that already has the stream up to `after` (an edge
    /// re-subscribing at a new owner): primed with the headers and every kept frame
    /// after that point, when the history reaches back that far. Otherwise (or with
    /// `None`) it starts like a new reader, at the GOP; the flag says whether it resumed.
    /// Either way it is given no live frame older than `after` (see `Entry::after`).
    pub fn subscribe_after(self: &Arc<Self>, after: Option<ResumePoint>) -> (Subscription, bool) {
        let mut state = lock(&self.state);
        let mut queue = Queue::new(self.limits.queue);
        let history = match (&state.history, after) {
            (Some(history), Some(point)) if covers(history, &point) => Some((history, point)),
            _ => None,
        };
        let resumed = history.is_some();
        match history {
            Some((history, point)) => {
                for frame in history.replay().filter(|f| f.header || point.wants(f)) {
                    queue.push(frame.clone(), state.gop.is_start(frame));
                }
            }
            None => {
                for frame in state.gop.start_frames() {
                    let start = state.gop.is_start(frame);
                    queue.push(frame.clone(), start);
                }
            }
        }
        let reader = self.add_reader(&mut state, queue, false, after);
        (Subscription { hub: self.clone(), reader }, resumed)
    }

    fn add_reader(&self, state: &mut HubState, queue: Queue, window: bool, after: Option<ResumePoint>) -> Arc<Reader> {
        let reader = Arc::new(Reader {
            id: state.next_id,
            queue: Mutex::new(queue),
            wake: Notify::new(),
            ended: AtomicBool::new(state.ended),
            window,
            gate: OnceLock::new(),
            direct: OnceLock::new(),
        });
        state.next_id += 1;
        state.readers.push(Entry { reader: reader.clone(), after: after.filter(|a| !a.is_empty()) });
        reader
    }

    /// Subscribes an HLS reader: primed with the HLS window (the headers in effect at
    /// its start, then every frame from the oldest segment start the hub holds), then
    /// live, history included ([`Hub::publish_history`]). Without a window it starts
    /// like [`Hub::subscribe`], at the GOP. Its queue has room for the window on top of
    /// a player's.
    pub fn subscribe_window(self: &Arc<Self>) -> Subscription {
        let mut state = lock(&self.state);
        let held = state.window.as_ref().filter(|w| !w.is_empty());
        let limits = QueueLimits {
            max_frames: self.limits.queue.max_frames + held.map_or(0, |w| w.frames()),
            max_bytes: self.limits.queue.max_bytes.saturating_add(held.map_or(0, |w| w.bytes())),
        };
        let mut queue = Queue::new(limits);
        match held {
            Some(window) => {
                for frame in window.replay() {
                    queue.push(frame.clone(), state.gop.is_start(frame));
                }
            }
            None => {
                for frame in state.gop.start_frames() {
                    queue.push(frame.clone(), state.gop.is_start(frame));
                }
            }
        }
        let reader = self.add_reader(&mut state, queue, true, None);
        Subscription { hub: self.clone(), reader }
    }

    /// [`Hub::subscribe_window`] for the one reader that packages the stream on this
    /// edge: the window goes to it and the hub keeps none after (the packaged window
    /// holds the same media from then on; keeping both doubled an HLS stream's memory),
    /// nor starts one, until [`Hub::stop_window`]. A window still waiting for its
    /// earlier frames is given up: the reader starts with what is here.
    pub fn take_window(self: &Arc<Self>) -> Subscription {
        let subscription = self.subscribe_window();
        let mut state = lock(&self.state);
        state.window = None;
        state.tail = None;
        state.handed_over = true;
        subscription
    }

    /// Subscribes a relay for an edge that starts the stream (an origin's side of
    /// `SubscribeWindow`): the window's frames that precede the live start, to be sent
    /// as history, and a subscription from the GOP like [`Hub::subscribe`]. Taken
    /// under one lock, so the two neither overlap nor leave a gap.
    pub fn subscribe_with_window(self: &Arc<Self>) -> (Vec<Frame>, Subscription) {
        let mut state = lock(&self.state);
        let live_start = state.gop.start_frames().find(|f| !f.header).cloned();
        let history: Vec<Frame> = match (&state.window, &live_start) {
            (Some(window), Some(first)) if window.replay().any(|f| f == first) => {
                window.replay().take_while(|f| *f != first).cloned().collect()
            }
            // The GOP overflowed: everything kept precedes the next start.
            (Some(window), None) => window.replay().cloned().collect(),
            _ => Vec::new(),
        };
        // Live frames wait while the history is sent: room for as much again, so a
        // slow link does not make the live part skip to a keyframe (a hole in HLS).
        let limits = QueueLimits {
            max_frames: self.limits.queue.max_frames + history.len(),
            max_bytes: self.limits.queue.max_bytes.saturating_add(history.iter().map(Frame::cost).sum()),
        };
        let mut queue = Queue::new(limits);
        for frame in state.gop.start_frames() {
            queue.push(frame.clone(), state.gop.is_start(frame));
        }
        let reader = self.add_reader(&mut state, queue, false, None);
        (history, Subscription { hub: self.clone(), reader })
    }

    /// Where the HLS numbering of this hub's frames stands (the last mark published):
    /// what a new publishing session continues after.
    pub fn last_mark(&self) -> Option<Continuation> {
        lock(&self.state).last_mark
    }

    /// (segments, frames, bytes) of the HLS window held (a tail waiting for the
    /// window's earlier frames counts as frames and bytes).
    pub fn window_size(&self) -> (usize, usize, usize) {
        let state = lock(&self.state);
        let (segments, frames, bytes) =
            state.window.as_ref().map_or((0, 0, 0), |w| (w.segments(), w.frames(), w.bytes()));
        let (tail_frames, tail_bytes) = state.tail.as_ref().map_or((0, 0), |t| (t.frames.len(), t.bytes));
        (segments, frames + tail_frames, bytes + tail_bytes)
    }

    /// Whether this hub keeps an HLS window now (or is starting one).
    pub fn keeps_window(&self) -> bool {
        let state = lock(&self.state);
        state.window.is_some() || state.tail.is_some()
    }

    /// Every frame of the HLS window, in order (an origin's answer to `FetchWindow`).
    pub fn window_frames(&self) -> Vec<Frame> {
        lock(&self.state).window.as_ref().map_or_else(Vec::new, |w| w.replay().cloned().collect())
    }

    /// Keeps history with `limits` for readers resuming after a takeover
    /// ([`Hub::subscribe_after`]), starting from the current GOP; `None` lets go of it.
    /// A hub keeping history already goes on with what it has.
    pub fn keep_history(&self, limits: Option<RetainLimits>) {
        let mut state = lock(&self.state);
        match limits {
            None => state.history = None,
            Some(_) if state.history.is_some() => {}
            Some(limits) => {
                let mut history = Retained::new(limits);
                for frame in state.gop.start_frames() {
                    history.push(frame.clone(), true);
                }
                state.history = Some(history);
            }
        }
    }

    /// Stops keeping the HLS window and lets go of its frames (nobody on this edge
    /// reads the stream over HLS). Players are not affected.
    pub fn stop_window(&self) {
        let mut state = lock(&self.state);
        state.window = None;
        state.tail = None;
        state.handed_over = false;
        self.history_done.store(false, Ordering::Release);
    }

    /// Starts keeping the HLS window on a hub that has none (HLS starts on an edge
    /// whose relay carried players only): frames published from now on are kept apart
    /// until [`Hub::splice_window`] brings the earlier ones. `false` when the hub keeps
    /// a window already (nothing to fetch). Players are not affected.
    pub fn start_window(&self) -> bool {
        let mut state = lock(&self.state);
        if state.window.is_some() || state.tail.is_some() || state.handed_over || self.limits.window.is_none() {
            return false;
        }
        self.history_done.store(false, Ordering::Release);
        state.tail = Some(Tail { anchor: state.last.clone(), ..Tail::default() });
        true
    }

    /// Joins the window's earlier frames (what the owner held, `FetchWindow`) to the
    /// frames published since [`Hub::start_window`], and keeps the window from then on
    /// as if the hub had always kept it; then the history is over
    /// ([`Hub::history_ended`]). `fetched` must reach the first frame published since
    /// (it was taken after it); where it does not, or is empty, the window starts with
    /// what was published since. Returns whether the two joined. Does nothing (`false`)
    /// when the window was stopped or already joined meanwhile.
    pub fn splice_window(&self, fetched: Vec<Frame>) -> bool {
        let mut state = lock(&self.state);
        if state.tail.is_none() {
            return false;
        }
        let joined = Self::join_window(&mut state, self.limits, fetched);
        drop(state);
        self.end_history();
        joined
    }

    fn join_window(state: &mut HubState, limits: HubLimits, fetched: Vec<Frame>) -> bool {
        let Some(tail) = state.tail.take() else { return false };
        let mut window = SegmentWindow::new(limits.window.unwrap_or_default());
        let at = join_point(&fetched, tail.anchor.as_ref(), &tail.frames);
        for frame in &fetched[..at.unwrap_or(0)] {
            window.push(frame);
        }
        for frame in &tail.frames {
            window.push(frame);
        }
        state.window = Some(window);
        at.is_some()
    }

    /// The stream ended: readers get what is queued, then `None`.
    pub fn end(&self) {
        let mut state = lock(&self.state);
        state.ended = true;
        for Entry { reader, .. } in &state.readers {
            reader.ended.store(true, Ordering::Release);
            reader.wake.notify_one();
        }
        drop(state);
        self.stop_shards();
    }

    /// The fan-out writes what it has queued, and its tasks end once their readers left.
    fn stop_shards(&self) {
        for shard in self.shards.get().into_iter().flatten() {
            shard.stop();
        }
    }

    fn ended(&self) -> bool {
        lock(&self.state).ended
    }

    pub fn reader_count(&self) -> usize {
        lock(&self.state).readers.len()
    }
}

/// Frames published while a late window waits for its earlier frames.
#[derive(Default)]
struct Tail {
    /// The last frame published before the tail began: where the fetched frames
    /// must join it.
    anchor: Option<Frame>,
    frames: Vec<Frame>,
    bytes: usize,
}

/// The same frame on both sides of a splice: everything but the RTMP timestamp, which
/// a relay's continuity may have rebased (HLS packages the mark's timeline, never the
/// timestamp).
fn same_frame(a: &Frame, b: &Frame) -> bool {
    a.kind == b.kind && a.header == b.header && a.keyframe == b.keyframe && a.hls == b.hls && a.payload == b.payload
}

/// How many of the `fetched` frames (a window taken after the tail began) come before
/// the `tail`: up to and including the `anchor` (the last frame published before the
/// tail), or up to the tail's first frame, such that whatever `fetched` holds after
/// that point is the tail's beginning (headers the relay's continuity dropped as
/// unchanged repeats aside). The anchor also joins a window taken before any tail
/// frame reached the edge (no overlap at all). `None` when they do not meet.
fn join_point(fetched: &[Frame], anchor: Option<&Frame>, tail: &[Frame]) -> Option<usize> {
    let leads_into_tail = |rest: &[Frame]| {
        let mut t = tail.iter().peekable();
        for f in rest {
            match t.peek() {
                None => return true,
                Some(next) if same_frame(f, next) => {
                    t.next();
                }
                Some(_) if f.header => {}
                Some(_) => return false,
            }
        }
        true
    };
    let after_anchor = anchor.and_then(|anchor| {
        (0..fetched.len())
            .rev()
            .filter(|&p| same_frame(&fetched[p], anchor))
            .find(|&p| leads_into_tail(&fetched[p + 1..]))
    });
    if let Some(p) = after_anchor {
        return Some(p + 1);
    }
    let first = tail.first()?;
    (0..fetched.len()).filter(|&p| same_frame(&fetched[p], first)).find(|&p| leads_into_tail(&fetched[p..]))
}

/// Whether `history` holds everything after `point`: it reaches back to (or before) the
/// point for each kind the reader has.
fn covers(history: &Retained, point: &ResumePoint) -> bool {
    let oldest = |kind: FrameKind| history.replay().filter(|f| !f.header && f.kind == kind).map(|f| f.timestamp).next();
    let ok = |kind, after: Option<u32>| match after {
        None => true,
        Some(ts) => oldest(kind).is_some_and(|first| first <= ts),
    };
    (point.audio.is_some() || point.video.is_some())
        && ok(FrameKind::Audio, point.audio)
        && ok(FrameKind::Video, point.video)
}

/// Ends one reader from outside its task: it gets no frame published after
/// [`ReaderCloser::close`], but still what was queued before, then `None`.
#[derive(Clone)]
pub struct ReaderCloser {
    hub: Arc<Hub>,
    reader: Arc<Reader>,
}

impl ReaderCloser {
    pub fn close(&self) {
        let id = self.reader.id;
        lock(&self.hub.state).readers.retain(|e| e.reader.id != id);
        self.reader.ended.store(true, Ordering::Release);
        self.reader.wake.notify_one();
        if let Some((direct, _)) = self.reader.direct.get() {
            direct.shard.kick();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop_shards();
    }
}

impl Subscription {
    /// A handle that ends this reader (see [`ReaderCloser`]).
    pub fn closer(&self) -> ReaderCloser {
        ReaderCloser { hub: self.hub.clone(), reader: self.reader.clone() }
    }

    /// The next frame, waiting for one; `None` once the stream has ended and the queue
    /// is drained.
    ///
    /// While the reader's socket is lent to the fan-out ([`Subscription::lend`]) its
    /// frames are the fan-out's: this waits (for the end of the stream once the fan-out
    /// wrote everything, or for the connection to take its socket back).
    pub async fn recv(&self) -> Option<Frame> {
        loop {
            let lent = self.reader.lent();
            if lent.is_none() {
                if let Some(frame) = self.try_recv() {
                    return Some(frame);
                }
            }
            let queued = self.reader.backlog() > 0;
            if self.reader.ended.load(Ordering::Acquire) && !(lent.is_some() && queued) {
                // Frames pushed before `end` are already queued.
                return self.try_recv();
            }
            if let Some(direct) = lent.filter(|_| queued) {
                // Frames queued while the socket went back and forth: written now.
                direct.shard.kick();
            }
            let taken_back = async {
                match self.reader.direct.get() {
                    Some((direct, _)) => direct.out.taken_back().notified().await,
                    None => std::future::pending().await,
                }
            };
            let kicked = async {
                match self.reader.gate.get() {
                    Some(gate) => gate.kick.notified().await,
                    None => std::future::pending().await,
                }
            };
            // The gate is opened, and the socket taken back, by the task polling this
            // future, never while it runs: every wait is registered before they can be.
            tokio::select! {
                biased;
                () = self.reader.wake.notified() => {}
                () = kicked => {}
                () = taken_back => {}
            }
        }
    }

    /// Lends the reader's connection socket `out` to the stream's direct fan-out, as
    /// the play `tag` (see [`super::fanout`]); a reader lends at most once.
    pub fn lend(&self, out: Arc<dyn DirectOut>, tag: u32) {
        let shards = self.hub.shards.get_or_init(|| {
            let workers = tokio::runtime::Handle::try_current().map_or(1, |h| h.metrics().num_workers());
            (0..workers.clamp(1, MAX_SHARDS)).map(|_| Shard::spawn()).collect()
        });
        let index = (self.reader.id % shards.len() as u64) as usize;
        let shard = shards[index].clone();
        if self.reader.direct.set((Direct { out: out.clone(), shard: shard.clone() }, index)).is_ok() {
            shard.join(self.reader.clone(), out, tag);
            if self.hub.ended() {
                shard.stop();
            }
        }
    }

    /// Puts this reader behind `gate` (see [`AudioGate`]); a reader has at most one.
    pub fn set_gate(&self, gate: Arc<AudioGate>) {
        let _ = self.reader.gate.set(gate);
    }

    /// The next frame if one is queued.
    pub fn try_recv(&self) -> Option<Frame> {
        lock(&self.reader.queue).pop()
    }

    /// Frames this reader lost because it was behind.
    pub fn dropped(&self) -> u64 {
        lock(&self.reader.queue).dropped()
    }

    /// Frames waiting for this reader.
    pub fn backlog(&self) -> usize {
        lock(&self.reader.queue).len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.reader.id;
        lock(&self.hub.state).readers.retain(|e| e.reader.id != id);
        if let Some((direct, _)) = self.reader.direct.get() {
            direct.shard.leave(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frame::FrameKind;
    use crate::media::segments::WindowLimits;
    use bytes::Bytes;
    use std::time::Duration;

    fn video(ts: u32, key: bool) -> Frame {
        Frame::video(ts, Bytes::from(vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0, (ts % 251) as u8]))
    }

    fn small() -> HubLimits {
        HubLimits { queue: QueueLimits { max_frames: 64, max_bytes: usize::MAX }, ..HubLimits::default() }
    }

    #[test]
    fn a_reader_with_its_own_bounds_takes_a_burst_a_player_would_skip() {
        let hub = Hub::new(small());
        let player = hub.subscribe();
        let recorder = hub.subscribe_with_queue(QueueLimits { max_frames: 1024, max_bytes: usize::MAX });
        for i in 0..300u32 {
            hub.publish(video(i * 33, i % 60 == 0));
        }
        assert!(player.dropped() > 0, "a player's queue of 64 skipped");
        assert_eq!(recorder.dropped(), 0);
        let got: Vec<u32> = std::iter::from_fn(|| recorder.try_recv()).map(|f| f.timestamp).collect();
        assert_eq!(got, (0..300).map(|i| i * 33).collect::<Vec<_>>(), "every frame, in order");
    }

    #[tokio::test]
    async fn a_closed_reader_gets_what_was_queued_and_nothing_after() {
        let hub = Hub::new(small());
        let sub = hub.subscribe();
        hub.publish(video(0, true));
        hub.publish(video(33, false));
        sub.closer().close();
        hub.publish(video(66, false));
        assert_eq!(sub.recv().await.map(|f| f.timestamp), Some(0));
        assert_eq!(sub.recv().await.map(|f| f.timestamp), Some(33));
        assert!(sub.recv().await.is_none(), "nothing published after the close");
        assert_eq!(hub.reader_count(), 0);
    }

    #[tokio::test]
    async fn a_resuming_reader_gets_exactly_what_follows_its_point() {
        let limits = HubLimits {
            history: Some(RetainLimits { history_ms: 1000, max_bytes: usize::MAX, max_ms: 10_000, window_segments: 0 }),
            queue: QueueLimits { max_frames: 1024, max_bytes: usize::MAX },
            ..HubLimits::default()
        };
        let hub = Hub::new(limits);
        hub.publish(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])));
        for i in 0..150u32 {
            hub.publish(video(i * 33, i % 30 == 0));
        }
        // A reader that had video up to frame 100 (between keyframes) and no audio.
        let point = ResumePoint { audio: None, video: Some(100 * 33) };
        let (sub, resumed) = hub.subscribe_after(Some(point));
        assert!(resumed);
        let got: Vec<u32> = std::iter::from_fn(|| sub.try_recv()).filter(|f| !f.header).map(|f| f.timestamp).collect();
        assert_eq!(got, (101..150).map(|i| i * 33).collect::<Vec<_>>(), "frames after the point, none missing");
        // A point older than the history falls back to the GOP start.
        let (sub, resumed) = hub.subscribe_after(Some(ResumePoint { audio: None, video: Some(5) }));
        assert!(!resumed);
        assert!(std::iter::from_fn(|| sub.try_recv()).find(|f| !f.header).unwrap().keyframe);
        // Without history, resuming is never possible.
        let plain = Hub::new(small());
        plain.publish(video(0, true));
        assert!(!plain.subscribe_after(Some(point)).1);
    }

    #[test]
    fn history_turned_on_starts_at_the_gop_and_turned_off_resumes_nothing() {
        let limits = RetainLimits { history_ms: 1000, max_bytes: usize::MAX, max_ms: 10_000, window_segments: 0 };
        let hub = Hub::new(HubLimits { queue: QueueLimits { max_frames: 1024, max_bytes: usize::MAX }, ..small() });
        hub.publish(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])));
        for i in 0..40u32 {
            hub.publish(video(i * 33, i % 30 == 0));
        }
        // Off: a point inside the current GOP cannot be resumed from.
        let point = ResumePoint { audio: None, video: Some(35 * 33) };
        assert!(!hub.subscribe_after(Some(point)).1);
        // On: the GOP the hub holds (from the keyframe at frame 30) is history at once.
        hub.keep_history(Some(limits));
        let (sub, resumed) = hub.subscribe_after(Some(point));
        assert!(resumed);
        let got: Vec<u32> = std::iter::from_fn(|| sub.try_recv()).filter(|f| !f.header).map(|f| f.timestamp).collect();
        assert_eq!(got, (36..40).map(|i| i * 33).collect::<Vec<_>>());
        for i in 40..100u32 {
            hub.publish(video(i * 33, i % 30 == 0));
        }
        // Kept since, past the next GOP: a point before the current keyframe (90).
        let (_, resumed) = hub.subscribe_after(Some(ResumePoint { audio: None, video: Some(70 * 33) }));
        assert!(resumed);
        // Asked again, it goes on with what it has; off, it has nothing.
        hub.keep_history(Some(limits));
        assert!(hub.subscribe_after(Some(ResumePoint { audio: None, video: Some(70 * 33) })).1);
        hub.keep_history(None);
        assert!(!hub.subscribe_after(Some(ResumePoint { audio: None, video: Some(95 * 33) })).1);
    }

    #[tokio::test]
    async fn an_owner_s_history_covers_an_edge_cut_off_for_several_seconds() {
        // Found by the chaos harness (edge-owner-cut): an edge cut off from the owner
        // for 4 s came back 5.5 s after its players' last frame, and 4 s of history
        // made it start at the live keyframe, losing what was in between.
        let limits = HubLimits {
            history: Some(RetainLimits::default_history()),
            queue: QueueLimits { max_frames: 4096, max_bytes: usize::MAX },
            ..HubLimits::default()
        };
        let hub = Hub::new(limits);
        hub.publish(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])));
        // 20 s at 25 fps, a keyframe every 2 s.
        for i in 0..500u32 {
            hub.publish(video(i * 40, i % 50 == 0));
        }
        // The edge's players last got frame 274, 9 s before the newest, mid-GOP.
        let (sub, resumed) = hub.subscribe_after(Some(ResumePoint { audio: None, video: Some(274 * 40) }));
        assert!(resumed, "the history reaches back 9 s");
        let got: Vec<u32> = std::iter::from_fn(|| sub.try_recv()).filter(|f| !f.header).map(|f| f.timestamp).collect();
        assert_eq!(got, (275..500).map(|i| i * 40).collect::<Vec<_>>(), "every frame after the point");
    }

    #[tokio::test]
    async fn a_long_resend_after_an_owner_change_reaches_a_resuming_reader_whole() {
        // Found by tests/failover.rs with the publishing edge retaining 14 s: the relay
        // of a player edge re-subscribed at the new owner (`SubscribeAfter`) before the
        // publishing edge had re-sent anything, so the reader started at an empty GOP;
        // then the 14 s re-send (about 1 000 frames, most of them already delivered)
        // poured into its 512-frame queue, which overflowed and skipped to a keyframe,
        // and the players lost the frames between their point and that keyframe.
        let limits = HubLimits { history: Some(RetainLimits::default_history()), ..HubLimits::default() };
        let hub = Hub::new(limits);
        // 30 fps video with a keyframe every 2 s, 43 AAC frames a second.
        let mut stream: Vec<Frame> = Vec::new();
        for i in 0..(16 * 30) {
            stream.push(video(i * 1000 / 30, i % 60 == 0));
        }
        for i in 0..(16 * 43) {
            stream.push(Frame::audio(i * 1000 / 43, Bytes::from(vec![0xAF, 1, i as u8, (i >> 8) as u8])));
        }
        stream.sort_by_key(|f| f.timestamp);
        // Players have everything up to 15 s, mid-GOP; the new owner has nothing yet.
        let last = |kind: FrameKind| {
            stream.iter().filter(|f| f.kind == kind && f.timestamp <= 15_000).map(|f| f.timestamp).max()
        };
        let point = ResumePoint { audio: last(FrameKind::Audio), video: last(FrameKind::Video) };
        let (sub, resumed) = hub.subscribe_after(Some(point));
        assert!(!resumed, "nothing to resume from yet");
        // The publishing edge re-sends its 16 s, headers first, faster than the reader
        // takes them.
        hub.publish(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])));
        for f in &stream {
            hub.publish(f.clone());
        }
        let got: Vec<(FrameKind, u32)> =
            std::iter::from_fn(|| sub.try_recv()).filter(|f| !f.header).map(|f| (f.kind, f.timestamp)).collect();
        // The frames at the point itself may come again (the relay's continuity tells
        // equal timestamps apart by content); nothing older does.
        let at_or_after = |f: &&Frame| match f.kind {
            FrameKind::Audio => f.timestamp >= point.audio.unwrap(),
            _ => f.timestamp >= point.video.unwrap(),
        };
        let want: Vec<(FrameKind, u32)> = stream.iter().filter(at_or_after).map(|f| (f.kind, f.timestamp)).collect();
        assert_eq!(sub.dropped(), 0, "nothing the players lack is dropped");
        assert_eq!(got, want, "every frame from the point on, in order, and nothing before it");

        // Timestamps that start over far below a point (the 32-bit wrap, a new session
        // on the same hub) are not held back.
        let (sub, _) = hub.subscribe_after(Some(ResumePoint { audio: None, video: Some(u32::MAX - 100) }));
        hub.publish(video(20, true));
        let got: Vec<u32> = std::iter::from_fn(|| sub.try_recv()).filter(|f| !f.header).map(|f| f.timestamp).collect();
        assert!(got.ends_with(&[20]), "{got:?}");
    }

    #[tokio::test]
    async fn a_late_reader_starts_with_headers_and_the_keyframe() {
        let hub = Hub::new(small());
        hub.publish(Frame::metadata(0, Bytes::from_static(b"meta")));
        hub.publish(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])));
        hub.publish(video(0, true));
        hub.publish(video(40, false));
        let sub = hub.subscribe();
        hub.publish(video(80, false));
        let mut got = Vec::new();
        while let Some(f) = sub.try_recv() {
            got.push((f.kind, f.timestamp, f.keyframe, f.header));
        }
        assert_eq!(
            got,
            vec![
                (FrameKind::Data, 0, false, true),
                (FrameKind::Video, 0, false, true),
                (FrameKind::Video, 0, true, false),
                (FrameKind::Video, 40, false, false),
                (FrameKind::Video, 80, false, false),
            ]
        );
    }

    #[tokio::test]
    async fn a_stalled_reader_loses_only_its_own_frames() {
        let hub = Hub::new(small());
        let fast = hub.subscribe();
        let slow = hub.subscribe();
        let mut fast_got = 0;
        for i in 0..1000u32 {
            hub.publish(video(i * 33, i % 60 == 0));
            while fast.try_recv().is_some() {
                fast_got += 1;
            }
        }
        assert_eq!(fast_got, 1000, "the fast reader got every frame");
        assert_eq!(fast.dropped(), 0);
        assert!(slow.backlog() <= 64, "bounded: {}", slow.backlog());
        assert!(slow.dropped() > 900, "dropped {}", slow.dropped());
        assert_eq!(hub.drops(), slow.dropped(), "the hub counts drops as they happen");
        // What the slow reader has starts at a keyframe.
        assert!(slow.try_recv().unwrap().keyframe);
    }

    #[tokio::test]
    async fn readers_wake_for_frames_and_see_the_end() {
        let hub = Hub::new(small());
        let sub = hub.subscribe();
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(_f) = sub.recv().await {
                n += 1;
            }
            n
        });
        for i in 0..10u32 {
            hub.publish(video(i * 40, i == 0));
            tokio::task::yield_now().await;
        }
        hub.end();
        let n = tokio::time::timeout(Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(n, 10);
    }

    /// A gated reader sleeps through audio while the gate holds, wakes for video or
    /// when the gate opens, and then finds every frame queued meanwhile, in order.
    #[tokio::test]
    async fn a_held_gate_lets_audio_queue_without_waking_the_reader() {
        use futures::FutureExt;
        use std::future::Future;
        let audio = |ts: u32| Frame::audio(ts, Bytes::from_static(&[0xAF, 0x01, 7]));
        let hub = Hub::new(small());
        hub.publish(video(0, true));
        let sub = hub.subscribe();
        let gate = Arc::new(AudioGate::default());
        sub.set_gate(gate.clone());
        assert_eq!(sub.recv().await.unwrap().timestamp, 0, "the GOP");
        gate.hold();
        let mut next = Box::pin(sub.recv());
        assert!((&mut next).now_or_never().is_none(), "nothing queued yet");
        let (waker, woken) = futures_test_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(next.as_mut().poll(&mut cx).is_pending());
        hub.publish(audio(21));
        hub.publish(audio(42));
        assert!(!woken.load(Ordering::SeqCst), "audio woke a reader behind a held gate");
        hub.publish(video(33, false));
        assert!(woken.swap(false, Ordering::SeqCst), "video wakes it");
        assert_eq!(next.await.unwrap().timestamp, 21, "audio first, in order");
        assert_eq!(sub.try_recv().unwrap().timestamp, 42);
        assert_eq!(sub.try_recv().unwrap().timestamp, 33);
        // Audio alone, then the gate opens: the waiting reader wakes and takes it.
        let mut next = Box::pin(sub.recv());
        assert!(next.as_mut().poll(&mut cx).is_pending());
        hub.publish(audio(63));
        assert!(!woken.load(Ordering::SeqCst), "audio woke a reader behind a held gate");
        gate.open();
        assert!(woken.swap(false, Ordering::SeqCst), "opening the gate wakes it");
        assert_eq!(next.await.unwrap().timestamp, 63);
        // Open, audio wakes as before.
        let mut next = Box::pin(sub.recv());
        assert!(next.as_mut().poll(&mut cx).is_pending());
        hub.publish(audio(84));
        assert!(woken.load(Ordering::SeqCst), "an open gate lets audio wake the reader");
        assert_eq!(next.await.unwrap().timestamp, 84);
    }

    /// A waker that records whether it was woken.
    fn futures_test_waker() -> (std::task::Waker, Arc<AtomicBool>) {
        struct Flag(Arc<AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(AtomicBool::new(false));
        (std::task::Waker::from(Arc::new(Flag(woken.clone()))), woken)
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new(small());
        let a = hub.subscribe();
        let b = hub.subscribe();
        assert_eq!(hub.reader_count(), 2);
        drop(a);
        assert_eq!(hub.reader_count(), 1);
        drop(b);
        assert_eq!(hub.reader_count(), 0);
    }

    /// A marked stream: AVC header, then 30 fps video with a keyframe every second
    /// (2 s segments: two GOPs each) and no audio.
    fn marked_stream(frames: u32) -> Vec<Frame> {
        use crate::hls::stamper::{Stamper, StamperConfig};
        let mut stamper = Stamper::new(StamperConfig { target_ms: 2000, part_target_ms: 250 }, None);
        let mut out = vec![Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1]))];
        out.extend((0..frames).map(|i| video(i * 1000 / 30, i % 30 == 0)));
        for f in &mut out {
            f.hls = stamper.mark(f, 1_764_892_800_000 + u64::from(f.timestamp));
        }
        out
    }

    fn with_window(segments: usize) -> HubLimits {
        HubLimits {
            window: Some(WindowLimits { segments, max_bytes: usize::MAX, max_ms: 60_000 }),
            queue: QueueLimits { max_frames: 64, max_bytes: usize::MAX },
            ..HubLimits::default()
        }
    }

    fn segment_opens(f: &Frame) -> bool {
        f.hls.is_some_and(|m| matches!(m.boundary, Some(crate::hls::mark::Boundary::Segment(_))))
    }

    #[tokio::test]
    async fn a_window_reader_gets_the_last_complete_segments_then_live() {
        let hub = Hub::new(with_window(3));
        let stream = marked_stream(30 * 15); // 15 s: segments of 2 s, the last one open
        for f in &stream[..stream.len() - 10] {
            hub.publish(f.clone());
        }
        let sub = hub.subscribe_window();
        let player = hub.subscribe();
        for f in &stream[stream.len() - 10..] {
            hub.publish(f.clone());
        }
        let got: Vec<Frame> = std::iter::from_fn(|| sub.try_recv()).collect();
        assert!(got[0].header, "the header in effect comes first");
        assert!(segment_opens(&got[1]), "then a segment start");
        let msns: Vec<u64> = got[1..].iter().filter(|f| segment_opens(f)).map(|f| f.hls.unwrap().msn).collect();
        assert_eq!(msns.len(), 4, "three complete segments and the open one: {msns:?}");
        // Exactly the published frames from that start on: nothing missing, nothing twice.
        let from = stream.iter().position(|f| *f == got[1]).unwrap();
        assert_eq!(&got[1..], &stream[from..], "every frame from the oldest kept segment start");
        assert_eq!(hub.window_size().0, 4);
        // A player still starts at the live GOP, not seconds back.
        let first = std::iter::from_fn(|| player.try_recv()).find(|f| !f.header).unwrap();
        let last_key = stream[..stream.len() - 10].iter().rposition(|f| f.keyframe).unwrap();
        assert_eq!(first, stream[last_key]);
        assert_eq!(hub.last_mark().unwrap().msn, stream.last().unwrap().hls.unwrap().msn);
    }

    #[tokio::test]
    async fn history_reaches_window_readers_only_and_joins_the_live_start_exactly() {
        // The origin's hub: window and GOP.
        let origin = Hub::new(with_window(6));
        let stream = marked_stream(30 * 9);
        for f in &stream {
            origin.publish(f.clone());
        }
        let (history, live) = origin.subscribe_with_window();
        let live: Vec<Frame> = std::iter::from_fn(|| live.try_recv()).collect();
        // A new relay's hub on an edge, with an HLS reader and a player already waiting.
        let edge =
            Hub::new(HubLimits { queue: QueueLimits { max_frames: 1024, max_bytes: usize::MAX }, ..with_window(6) });
        let hls = edge.subscribe_window();
        let player = edge.subscribe();
        for f in history {
            edge.publish_history(f);
        }
        // The relay's continuity drops the live repeat of unchanged headers.
        for f in live.iter().filter(|f| !f.header) {
            edge.publish(f.clone());
        }
        let player_got: Vec<Frame> = std::iter::from_fn(|| player.try_recv()).collect();
        assert!(player_got[0].header, "a waiting player gets the headers of the history: {:?}", player_got[0]);
        let media: Vec<Frame> = player_got.iter().filter(|f| !f.header).cloned().collect();
        assert!(media[0].keyframe, "players start at the live GOP");
        assert_eq!(media, live.iter().filter(|f| !f.header).cloned().collect::<Vec<_>>());
        let hls_got: Vec<Frame> = std::iter::from_fn(|| hls.try_recv()).collect();
        let first_start = stream.iter().position(segment_opens).unwrap();
        assert_eq!(&hls_got[1..], &stream[first_start..], "history then live: every frame once, in order");
        // A window reader arriving later gets the same from the edge's own window.
        let late_sub = edge.subscribe_window();
        let late: Vec<Frame> = std::iter::from_fn(|| late_sub.try_recv()).collect();
        assert_eq!(late, hls_got);
    }

    #[tokio::test]
    async fn a_window_started_late_joins_the_owners_exactly_and_players_see_nothing_of_it() {
        let stream = marked_stream(30 * 16);
        let origin = Hub::new(with_window(6));
        // An edge relaying to a player only: no window.
        let limits = HubLimits { queue: QueueLimits { max_frames: 4096, max_bytes: usize::MAX }, ..with_window(6) };
        let edge = Hub::new(limits);
        edge.stop_window();
        assert!(!edge.keeps_window());
        let player = edge.subscribe();
        // The relay's continuity may have rebased the edge's timestamps: the join must
        // not depend on them.
        let relayed = |f: &Frame| Frame { timestamp: f.timestamp.wrapping_add(7), ..f.clone() };
        let (a, b, c) = (30 * 8, 30 * 8 + 17, 30 * 9 + 5);
        for f in &stream[..a] {
            origin.publish(f.clone());
            edge.publish(relayed(f));
        }
        assert_eq!(edge.window_size(), (0, 0, 0), "players only: nothing kept for HLS");
        // HLS starts: the edge keeps what comes from now on; the owner's window is taken
        // after that (the fetch), while frames keep coming to both.
        assert!(edge.start_window());
        assert!(!edge.start_window(), "started once");
        for f in &stream[a..b] {
            origin.publish(f.clone());
            edge.publish(relayed(f));
        }
        let fetched = origin.window_frames();
        for f in &stream[b..c] {
            origin.publish(f.clone());
            edge.publish(relayed(f));
        }
        let hls = {
            let waiting = edge.clone();
            tokio::spawn(async move { waiting.history_ended().await })
        };
        assert!(edge.splice_window(fetched), "the owner's window reaches the first frame kept since");
        tokio::time::timeout(Duration::from_secs(5), hls).await.unwrap().unwrap();
        for f in &stream[c..] {
            origin.publish(f.clone());
            edge.publish(relayed(f));
        }
        // The edge's window is the owner's: same frames, same marks, same segments.
        let ours: Vec<Frame> = std::iter::from_fn({
            let sub = edge.subscribe_window();
            move || sub.try_recv()
        })
        .collect();
        let theirs = origin.window_frames();
        assert_eq!(ours.len(), theirs.len());
        assert!(ours.iter().zip(&theirs).all(|(x, y)| same_frame(x, y)), "the same window as the owner's");
        assert_eq!(edge.window_size().0, origin.window_size().0);
        // The player got the live stream, every frame once, in order, nothing else.
        let got: Vec<Frame> = std::iter::from_fn(|| player.try_recv()).collect();
        let want: Vec<Frame> = stream.iter().map(relayed).collect();
        assert!(got == want, "a player sees no change when HLS starts: {} frames of {}", got.len(), want.len());
        // The packager takes the window: the same frames, and the hub keeps none after.
        let packager = edge.take_window();
        let taken: Vec<Frame> = std::iter::from_fn(|| packager.try_recv()).collect();
        assert!(taken.len() == ours.len() && taken.iter().zip(&ours).all(|(x, y)| same_frame(x, y)));
        assert_eq!(edge.window_size(), (0, 0, 0), "not kept twice");
        assert!(!edge.start_window(), "nor started again while the packager reads");
        // HLS stops: the window goes, players go on.
        edge.stop_window();
        assert_eq!(edge.window_size(), (0, 0, 0));
        assert!(!edge.keeps_window());
        assert!(edge.start_window(), "HLS may start again");
        edge.stop_window();
        let more = video(100_000, true);
        edge.publish(more.clone());
        assert_eq!(player.try_recv(), Some(more), "nor when it stops");
    }

    #[test]
    fn a_window_taken_before_any_tail_frame_joins_at_the_last_frame_before_it() {
        // The owner answered before the next frame reached the edge: no overlap.
        let stream = marked_stream(30 * 12);
        let origin = Hub::new(with_window(6));
        let edge = Hub::new(with_window(6));
        edge.stop_window();
        for f in &stream[..250] {
            origin.publish(f.clone());
            edge.publish(f.clone());
        }
        assert!(edge.start_window());
        let fetched = origin.window_frames();
        for f in &stream[250..] {
            origin.publish(f.clone());
            edge.publish(f.clone());
        }
        assert!(edge.splice_window(fetched));
        assert!(edge.window_frames() == origin.window_frames(), "the same window as the owner's");
    }

    #[test]
    fn a_fetched_window_that_misses_the_live_frames_is_not_joined() {
        let stream = marked_stream(30 * 10);
        let edge = Hub::new(with_window(6));
        edge.stop_window();
        assert!(edge.start_window());
        for f in &stream[200..] {
            edge.publish(f.clone());
        }
        // Frames that end before the tail starts: a gap, so they are left out.
        assert!(!edge.splice_window(stream[..150].to_vec()));
        let kept: Vec<Frame> = edge.window_frames();
        let first_start = 200 + stream[200..].iter().position(segment_opens).unwrap();
        assert!(kept == stream[first_start..], "the window starts with what came live (no header came since)");
        // Stopped meanwhile: a late answer changes nothing.
        edge.stop_window();
        assert!(!edge.splice_window(stream.clone()));
        assert!(!edge.keeps_window());
    }

    #[tokio::test]
    async fn without_marks_a_window_reader_starts_at_the_gop() {
        let hub = Hub::new(with_window(6));
        hub.publish(video(0, true));
        hub.publish(video(40, false));
        let sub = hub.subscribe_window();
        assert_eq!(std::iter::from_fn(|| sub.try_recv()).count(), 2);
        let (history, _) = hub.subscribe_with_window();
        assert!(history.is_empty());
        assert_eq!(hub.last_mark(), None);
    }
}
