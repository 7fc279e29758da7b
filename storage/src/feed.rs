//! The state machine's change feed: every applied change, in commit order, to any
//! number of watchers, kept in a ring bounded in notices **and bytes**.
//!
//! tokio's `broadcast` keeps its last N messages whether anyone reads them or not; with
//! notices that carry the values their entry wrote, 256 of them held up to 64 MiB after
//! a flood of 64 KiB writes, for as long as no new write pushed them out — an origin's
//! memory never came back after a burst. Here the ring also drops its oldest notices
//! beyond [`NOTICE_BUFFER_BYTES`] (keeping at least the newest), so what an idle origin
//! holds for its watchers is bounded by bytes. A watcher that falls further behind gets
//! `Lagged` and re-reads the state, as with `broadcast`.
//!
//! The ring also knows where each receiver is, and keeps only what some receiver has not
//! read yet: once every watcher has caught up after a burst, it holds nothing (it used to
//! keep the burst's last 2 MiB of values for as long as the origin stayed quiet).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use raftcast_raft::state::{Event, ObjectChange};
pub use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::state_machine::Notice;

/// Most notices the feed keeps for watchers that have not read them yet.
pub const NOTICE_BUFFER: usize = 256;
/// Most bytes of notices (by [`cost`]) the feed keeps: eight of the largest entries
/// (`--max-entry-bytes`, 256 KiB), so a watcher may fall that far behind before it must
/// re-read the state, and an origin holds at most this much after a burst.
pub const NOTICE_BUFFER_BYTES: usize = 2 * 1024 * 1024;

/// Bytes a notice accounts for: the slot names and values it carries, plus a fixed
/// overhead per event.
pub fn cost(notice: &Notice) -> usize {
    const OVERHEAD: usize = 64;
    match notice {
        Notice::Replaced { .. } => OVERHEAD,
        Notice::Applied { events, .. } => events
            .iter()
            .map(|e| match e {
                Event::Object { object, change: ObjectChange::Set { slots }, .. } => {
                    OVERHEAD + object.len() + slots.iter().map(|(k, v)| k.len() + v.encoded_len()).sum::<usize>()
                }
                Event::Object { object, .. } => OVERHEAD + object.len(),
                Event::Stream { .. } => OVERHEAD,
            })
            .sum(),
    }
}

struct Ring {
    notices: VecDeque<(Notice, usize)>,
    /// Sequence number of `notices[0]`.
    first: u64,
    bytes: usize,
    /// How many receivers read next from each sequence number.
    readers: BTreeMap<u64, usize>,
}

impl Ring {
    fn next(&self) -> u64 {
        self.first + self.notices.len() as u64
    }

    fn drop_front(&mut self) {
        if let Some((_, size)) = self.notices.pop_front() {
            self.bytes -= size;
            self.first += 1;
        }
    }

    /// Drops the notices every receiver has read (all of them when nobody listens).
    fn drop_read(&mut self) {
        let slowest = self.readers.keys().next().copied().unwrap_or(u64::MAX);
        while self.first < slowest && !self.notices.is_empty() {
            self.drop_front();
        }
    }

    fn add_reader(&mut self, at: u64) {
        *self.readers.entry(at).or_default() += 1;
    }

    fn remove_reader(&mut self, at: u64) {
        if let Some(n) = self.readers.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.readers.remove(&at);
            }
        }
    }

    /// A receiver moved from `from` to `to`.
    fn move_reader(&mut self, from: u64, to: u64) {
        self.remove_reader(from);
        self.add_reader(to);
        self.drop_read();
    }
}

fn lock(ring: &Mutex<Ring>) -> std::sync::MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending side, owned by the state machine. Dropping it closes every receiver.
pub struct Feed {
    ring: Arc<Mutex<Ring>>,
    /// The sequence number the next notice gets; receivers wait on its changes.
    next: watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::new()
    }
}

impl Feed {
    pub fn new() -> Self {
        let ring = Ring { notices: VecDeque::new(), first: 0, bytes: 0, readers: BTreeMap::new() };
        Feed { ring: Arc::new(Mutex::new(ring)), next: watch::Sender::new(0) }
    }

    /// Appends a notice; never waits.
    pub fn send(&self, notice: Notice) {
        let size = cost(&notice);
        let next = {
            let mut ring = lock(&self.ring);
            ring.notices.push_back((notice, size));
            ring.bytes += size;
            while ring.notices.len() > NOTICE_BUFFER || (ring.bytes > NOTICE_BUFFER_BYTES && ring.notices.len() > 1) {
                ring.drop_front();
            }
            ring.drop_read();
            ring.next()
        };
        self.next.send_replace(next);
    }

    /// A receiver of the notices sent from now on.
    pub fn subscribe(&self) -> NoticeReceiver {
        let rx = self.next.subscribe();
        let next = {
            let mut ring = lock(&self.ring);
            let next = ring.next();
            ring.add_reader(next);
            next
        };
        NoticeReceiver { ring: self.ring.clone(), next, rx }
    }

    /// Bytes of notices held now.
    pub fn held_bytes(&self) -> usize {
        lock(&self.ring).bytes
    }
}

/// One watcher's end of the feed.
pub struct NoticeReceiver {
    ring: Arc<Mutex<Ring>>,
    /// Sequence number of the next notice this receiver reads.
    next: u64,
    rx: watch::Receiver<u64>,
}

impl NoticeReceiver {
    /// The next notice; `Lagged(n)` when `n` notices were dropped before this receiver
    /// read them (it continues with the oldest one kept), `Closed` once the state
    /// machine is gone.
    pub async fn recv(&mut self) -> Result<Notice, RecvError> {
        loop {
            {
                let mut ring = lock(&self.ring);
                if self.next < ring.first {
                    let missed = ring.first - self.next;
                    let first = ring.first;
                    ring.move_reader(self.next, first);
                    self.next = first;
                    return Err(RecvError::Lagged(missed));
                }
                if let Some((notice, _)) = ring.notices.get((self.next - ring.first) as usize) {
                    let notice = notice.clone();
                    ring.move_reader(self.next, self.next + 1);
                    self.next += 1;
                    return Ok(notice);
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(RecvError::Closed);
            }
        }
    }
}

impl Drop for NoticeReceiver {
    fn drop(&mut self) {
        let mut ring = lock(&self.ring);
        ring.remove_reader(self.next);
        ring.drop_read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftcast_raft::value::Value;

    fn write(index: u64, bytes: usize) -> Notice {
        let slots = vec![("s".to_string(), Value::String("x".repeat(bytes)))];
        let event = Event::Object { object: "o".into(), version: index, change: ObjectChange::Set { slots } };
        Notice::Applied { index, events: Arc::new(vec![event]) }
    }

    fn index(n: &Notice) -> u64 {
        match n {
            Notice::Applied { index, .. } | Notice::Replaced { index } => *index,
        }
    }

    #[tokio::test]
    async fn receivers_get_every_notice_in_order() {
        let feed = Feed::new();
        let mut a = feed.subscribe();
        feed.send(write(1, 10));
        let mut b = feed.subscribe();
        feed.send(write(2, 10));
        assert_eq!(index(&a.recv().await.unwrap()), 1);
        assert_eq!(index(&a.recv().await.unwrap()), 2);
        assert_eq!(index(&b.recv().await.unwrap()), 2, "a receiver starts at its subscription");
        let waiting = tokio::spawn(async move { index(&a.recv().await.unwrap()) });
        tokio::task::yield_now().await;
        feed.send(write(3, 10));
        assert_eq!(waiting.await.unwrap(), 3, "a waiting receiver wakes");
    }

    #[tokio::test]
    async fn an_idle_feed_holds_at_most_its_byte_budget() {
        let feed = Feed::new();
        let mut slow = feed.subscribe();
        for i in 1..=64 {
            feed.send(write(i, 64 * 1024));
        }
        assert!(feed.held_bytes() <= NOTICE_BUFFER_BYTES, "held {} bytes", feed.held_bytes());
        match slow.recv().await {
            Err(RecvError::Lagged(n)) => assert!(n > 0),
            other => panic!("expected Lagged, got {other:?}"),
        }
        let next = index(&slow.recv().await.unwrap());
        assert!(next > 1 && next <= 64, "continues with the oldest kept, got {next}");
        // One notice larger than the budget is still delivered.
        feed.send(write(65, 3 * 1024 * 1024));
        let mut last = 0;
        while let Ok(n) = tokio::time::timeout(std::time::Duration::from_millis(10), slow.recv()).await {
            if let Ok(n) = n {
                last = index(&n);
            }
        }
        assert_eq!(last, 65);
    }

    #[tokio::test]
    async fn notices_every_receiver_has_read_are_let_go() {
        let feed = Feed::new();
        feed.send(write(1, 1000));
        assert_eq!(feed.held_bytes(), 0, "nobody listens: nothing is kept");
        let mut a = feed.subscribe();
        let mut b = feed.subscribe();
        feed.send(write(2, 1000));
        feed.send(write(3, 1000));
        let two = feed.held_bytes();
        assert!(two > 2000);
        assert_eq!(index(&a.recv().await.unwrap()), 2);
        assert_eq!(index(&a.recv().await.unwrap()), 3);
        assert_eq!(feed.held_bytes(), two, "b has read neither");
        assert_eq!(index(&b.recv().await.unwrap()), 2);
        assert!(feed.held_bytes() < two && feed.held_bytes() > 0, "b still needs 3");
        drop(b);
        assert_eq!(feed.held_bytes(), 0, "a read everything; b is gone");
        feed.send(write(4, 10));
        assert_eq!(index(&a.recv().await.unwrap()), 4);
        assert_eq!(feed.held_bytes(), 0);
    }

    #[tokio::test]
    async fn receivers_close_with_the_feed() {
        let feed = Feed::new();
        let mut rx = feed.subscribe();
        drop(feed);
        assert!(matches!(rx.recv().await, Err(RecvError::Closed)));
    }
}
