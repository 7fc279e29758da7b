//! The edges' change feed: [`StreamWatch::wait`] answers `Forward::WatchStream` on any
//! origin, from its applied state, once a stream's claim differs from what the edge
//! knows, or when the wait runs out.
//!
//! One task follows the state machine's notices and wakes the watchers of each stream
//! whose claim changed (every watcher after a snapshot install or a feed that lagged);
//! a watcher then re-reads the claim itself. Watches are the requests' own futures,
//! at most [`MAX_WATCHES`] at once, and all end at shutdown. Never proposes anything
//! and never holds a lock across an `.await`.

use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::command::StreamClaim;
use raftcast_raft::state::Event;
use raftcast_raft::StreamKey;
use raftcast_storage::RecvError;
use raftcast_storage::{Notice, StateHandle};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::lease::{Lease, Leases, Released};

/// Watches one origin holds at once. A watch beyond this is answered at once with the
/// current state (the edge asks again, which paces it).
pub const MAX_WATCHES: usize = 4096;

/// The watchers of each stream share one `Notify`, there while any waits.
type Registry = Leases<StreamKey, Arc<Notify>>;

impl Released for Arc<Notify> {}

/// Waits for claim changes. Cheap to clone.
#[derive(Clone)]
pub struct StreamWatch {
    state: StateHandle,
    watchers: Registry,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl StreamWatch {
    /// Starts following `state`'s changes until `shutdown`. Must run inside the runtime.
    pub fn new(state: StateHandle, shutdown: CancellationToken) -> Self {
        let watchers = Registry::default();
        // Subscribe before any watcher can read the state, so no change falls between.
        let notices = state.subscribe();
        tokio::spawn(tracing::Instrument::in_current_span(follow(notices, watchers.clone(), shutdown.clone())));
        StreamWatch { state, watchers, permits: Arc::new(Semaphore::new(MAX_WATCHES)), shutdown }
    }

    /// Watches waiting now.
    pub fn waiting(&self) -> usize {
        MAX_WATCHES - self.permits.available_permits()
    }

    /// The applied claim of `stream`, once its epoch differs from `known` (a new epoch,
    /// a release, or a first claim when `known` is `None`), or when `wait` passed, the
    /// origin shuts down, or [`MAX_WATCHES`] already wait (then at once).
    pub async fn wait(&self, stream: &StreamKey, known: Option<u64>, wait: Duration) -> Option<StreamClaim> {
        let current = || self.state.read(|sm| sm.streams.get(stream).cloned());
        let changed = |claim: &Option<StreamClaim>| claim.as_ref().map(|c| c.epoch) != known;
        let now = current();
        if changed(&now) || wait.is_zero() || self.shutdown.is_cancelled() {
            return now;
        }
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!(%stream, "too many stream watches; answering at once");
            return now;
        };
        let deadline = tokio::time::Instant::now() + wait;
        let watcher = Watcher::register(&self.watchers, stream);
        loop {
            let notified = watcher.notify().notified();
            tokio::pin!(notified);
            // Enabled before reading: a change applied after the read wakes it.
            notified.as_mut().enable();
            let claim = current();
            if changed(&claim) {
                return claim;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return current(),
                _ = self.shutdown.cancelled() => return current(),
            }
        }
    }
}

/// One waiting watch of one stream; unregisters when dropped (also when the request
/// is abandoned mid-wait).
struct Watcher(Lease<StreamKey, Arc<Notify>>);

impl Watcher {
    fn register(watchers: &Registry, stream: &StreamKey) -> Self {
        Watcher(watchers.acquire(stream, Arc::default))
    }

    fn notify(&self) -> &Notify {
        self.0.value()
    }
}

/// Wakes the watchers of every stream whose claim changed.
async fn follow(mut notices: raftcast_storage::NoticeReceiver, watchers: Registry, shutdown: CancellationToken) {
    loop {
        let notice = tokio::select! {
            notice = notices.recv() => notice,
            _ = shutdown.cancelled() => return,
        };
        match notice {
            Ok(Notice::Applied { events, .. }) => {
                for event in events.iter() {
                    if let Event::Stream { stream, .. } = event {
                        if let Some(notify) = watchers.get(stream) {
                            notify.notify_waiters();
                        }
                    }
                }
            }
            // A new state, or changes we missed: everyone re-reads.
            Ok(Notice::Replaced { .. }) | Err(RecvError::Lagged(_)) => {
                for (_, notify, _) in watchers.entries() {
                    notify.notify_waiters();
                }
            }
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use raftcast_raft::{Command, Proposal, Request, RequestId, TypeConfig};
    use raftcast_storage::StateMachineStore;
    use std::time::Instant;

    fn key(name: &str) -> StreamKey {
        StreamKey::new("live", name).unwrap()
    }

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        let req = Request { id: RequestId(u128::from(index)), at_ms: 0, command };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::single(req)),
        }
    }

    fn claim(name: &str) -> Command {
        Command::ClaimStream { stream: key(name), owner: 2, edge: "e".into(), session: "s".into(), takeover: false }
    }

    fn store() -> (tempfile::TempDir, StateMachineStore) {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = raftcast_storage::open(dir.path(), &Default::default()).unwrap();
        (dir, sm)
    }

    #[tokio::test]
    async fn a_watch_answers_at_once_when_the_claim_already_differs() {
        let (_dir, mut sm) = store();
        let watch = StreamWatch::new(sm.handle(), CancellationToken::new());
        sm.apply([entry(3, claim("a"))]).await.unwrap();
        let started = Instant::now();
        assert_eq!(watch.wait(&key("a"), None, Duration::from_secs(10)).await.map(|c| c.epoch), Some(3));
        assert_eq!(watch.wait(&key("a"), Some(1), Duration::from_secs(10)).await.map(|c| c.epoch), Some(3));
        assert_eq!(watch.wait(&key("b"), Some(1), Duration::from_secs(10)).await, None, "released");
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_watch_waits_for_a_change_of_its_own_stream_or_its_deadline() {
        let (_dir, mut sm) = store();
        let watch = StreamWatch::new(sm.handle(), CancellationToken::new());
        let waiting = {
            let watch = watch.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                (watch.wait(&key("a"), None, Duration::from_secs(10)).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another stream's change does not end it.
        sm.apply([entry(1, claim("b"))]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished());
        assert_eq!(watch.waiting(), 1);
        sm.apply([entry(2, claim("a"))]).await.unwrap();
        let (claim, took) = waiting.await.unwrap();
        assert_eq!(claim.map(|c| c.epoch), Some(2));
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert_eq!(watch.waiting(), 0);
        assert!(watch.watchers.is_empty(), "the watcher unregistered");
        // Nothing happens: the deadline answers with the unchanged claim.
        let started = Instant::now();
        let claim = watch.wait(&key("a"), Some(2), Duration::from_millis(300)).await;
        assert_eq!(claim.map(|c| c.epoch), Some(2));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn watches_beyond_the_limit_answer_at_once_and_shutdown_ends_them_all() {
        let (_dir, sm) = store();
        let shutdown = CancellationToken::new();
        let watch = StreamWatch::new(sm.handle(), shutdown.clone());
        let mut waits = tokio::task::JoinSet::new();
        for _ in 0..MAX_WATCHES {
            let watch = watch.clone();
            waits.spawn(async move { watch.wait(&key("a"), None, Duration::from_secs(30)).await });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while watch.waiting() < MAX_WATCHES {
            assert!(Instant::now() < deadline, "only {} watches started", watch.waiting());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        assert_eq!(watch.wait(&key("a"), None, Duration::from_secs(30)).await, None);
        assert!(started.elapsed() < Duration::from_millis(100), "the watch over the limit waited");
        shutdown.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(done) = waits.join_next().await {
                assert_eq!(done.unwrap(), None);
            }
        })
        .await;
        assert!(ended.is_ok(), "watches outlived shutdown");
        assert_eq!(watch.waiting(), 0);
    }
}
