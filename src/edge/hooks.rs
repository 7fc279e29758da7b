//! Webhooks: the edge tells an app's HTTP endpoints when a client connects, publishes
//! or plays (`on_connect`, `on_publish`, `on_play`: the answer admits or refuses the
//! client) and when it stops (`on_publish_done`, `on_play_done`: notices).
//!
//! The edge is where a client's session lives, so a session's `_done` notice comes from
//! the edge once, when the session ends, whatever happened to origins meanwhile: an
//! owner failover moves the stream under the session, not the session.
//!
//! Admission calls wait for the answer (at most the app's `timeout_ms`): a 2xx admits,
//! any other status refuses, and a hook that cannot be reached or answers late admits
//! or refuses as the app's `fail_open` says. Notices go through a bounded queue
//! ([`NOTICE_QUEUE`]; a full queue drops the notice and counts it) and are tried up to
//! [`NOTICE_ATTEMPTS`] times, at most [`NOTICES_IN_FLIGHT`] at once. Redirects are not
//! followed, and nothing of the cluster's secrets is sent.
//!
//! The body of every call is JSON: `{"event", "edge", "client", "protocol", "app",
//! "stream", "query", "session", "token", "at_ms"}` (`token`: the claims of the stream
//! token the client presented, if any).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftcast_raft::state::AppHooks;
use raftcast_raft::token::StreamClaims;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

/// Notices waiting to be sent; beyond this they are dropped (and counted).
pub const NOTICE_QUEUE: usize = 1024;
/// Tries per notice.
pub const NOTICE_ATTEMPTS: usize = 3;
/// Notices being sent at once.
pub const NOTICES_IN_FLIGHT: usize = 16;
/// Pause before the second and third try of a notice.
const RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// The events a hook can be called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    Connect,
    Publish,
    PublishDone,
    Play,
    PlayDone,
}

impl HookEvent {
    pub const ALL: [HookEvent; 5] =
        [HookEvent::Connect, HookEvent::Publish, HookEvent::PublishDone, HookEvent::Play, HookEvent::PlayDone];

    pub fn name(self) -> &'static str {
        match self {
            HookEvent::Connect => "on_connect",
            HookEvent::Publish => "on_publish",
            HookEvent::PublishDone => "on_publish_done",
            HookEvent::Play => "on_play",
            HookEvent::PlayDone => "on_play_done",
        }
    }

    fn url(self, hooks: &AppHooks) -> Option<&str> {
        match self {
            HookEvent::Connect => hooks.on_connect.as_deref(),
            HookEvent::Publish => hooks.on_publish.as_deref(),
            HookEvent::PublishDone => hooks.on_publish_done.as_deref(),
            HookEvent::Play => hooks.on_play.as_deref(),
            HookEvent::PlayDone => hooks.on_play_done.as_deref(),
        }
    }
}

/// What a hook is told about a client.
#[derive(Debug, Clone, Serialize)]
pub struct HookCall {
    /// Set by [`Hooks`] when it sends.
    pub event: &'static str,
    pub edge: String,
    /// The client's address (`ip:port`).
    pub client: String,
    /// `rtmp`, `rtmps`, `flv` (HTTP-FLV).
    pub protocol: &'static str,
    pub app: String,
    pub stream: Option<String>,
    /// The query the client gave with the stream name (or at connect).
    pub query: Option<String>,
    /// Unique per client session on this edge.
    pub session: String,
    pub token: Option<StreamClaims>,
    /// When the event happened, Unix ms.
    pub at_ms: u64,
}

impl HookCall {
    /// A call about `client`'s session `session` on `edge` (no token, no time yet:
    /// [`admit_session`] stamps the time).
    pub fn new(
        edge: &str,
        client: std::net::SocketAddr,
        protocol: &'static str,
        app: &str,
        stream: Option<&str>,
        query: Option<String>,
        session: String,
    ) -> HookCall {
        HookCall {
            event: "",
            edge: edge.to_owned(),
            client: client.to_string(),
            protocol,
            app: app.to_owned(),
            stream: stream.map(str::to_owned),
            query,
            session,
            token: None,
            at_ms: 0,
        }
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookRefusal {
    /// The hook answered this non-2xx status.
    #[error("refused by the app's {event} hook (status {status})")]
    Denied { event: &'static str, status: u16 },
    /// The hook could not be reached or answered late, and the app fails closed.
    #[error("the app's {event} hook did not answer; refusing")]
    Unreachable { event: &'static str },
}

/// Outcomes counted per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// A non-2xx answer.
    Denied,
    /// Not reached, or no answer in time (per try, for notices).
    Failed,
    /// A notice the full queue dropped.
    Dropped,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Ok, Outcome::Denied, Outcome::Failed, Outcome::Dropped];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Calls per event and outcome, for `/metrics`.
#[derive(Debug, Default)]
pub struct HookStats {
    counts: [[AtomicU64; 4]; 5],
}

impl HookStats {
    fn count(&self, event: HookEvent, outcome: Outcome) {
        self.counts[event as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Calls so far of `event` that ended with `outcome`.
    pub fn get(&self, event: HookEvent, outcome: Outcome) -> u64 {
        self.counts[event as usize][outcome as usize].load(Ordering::Relaxed)
    }
}

/// A notice to send.
struct Notice {
    event: HookEvent,
    url: String,
    timeout: Duration,
    call: HookCall,
}

/// Calls webhooks. Cheap to clone.
#[derive(Clone)]
pub struct Hooks {
    client: reqwest::Client,
    notices: mpsc::Sender<Notice>,
    pub stats: Arc<HookStats>,
}

impl Hooks {
    /// Starts the notice sender (it ends when the last `Hooks` is dropped), counting
    /// into `stats`. Must be called on the runtime.
    pub fn start(stats: Arc<HookStats>) -> Hooks {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(4)
            .build()
            .expect("a plain HTTP client builds");
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE);
        let hooks = Hooks { client, notices: tx, stats };
        tokio::spawn(send_notices(hooks.client.clone(), hooks.stats.clone(), rx));
        hooks
    }

    /// Asks `event`'s hook of the app (if it has one) whether to admit the client.
    pub async fn admit(
        &self,
        hooks: Option<&AppHooks>,
        event: HookEvent,
        mut call: HookCall,
    ) -> Result<(), HookRefusal> {
        let Some((hooks, url)) = hooks.and_then(|h| Some((h, event.url(h)?))) else { return Ok(()) };
        call.event = event.name();
        let timeout = Duration::from_millis(u64::from(hooks.timeout_ms));
        match post(&self.client, url, timeout, &call).await {
            Ok(status) if status.is_success() => {
                self.stats.count(event, Outcome::Ok);
                Ok(())
            }
            Ok(status) => {
                self.stats.count(event, Outcome::Denied);
                tracing::info!(event = event.name(), status = status.as_u16(), app = call.app, stream = ?call.stream, client = call.client, "hook refused the client");
                Err(HookRefusal::Denied { event: event.name(), status: status.as_u16() })
            }
            Err(e) => {
                self.stats.count(event, Outcome::Failed);
                tracing::warn!(event = event.name(), error = %e, fail_open = hooks.fail_open, "hook unreachable");
                if hooks.fail_open {
                    Ok(())
                } else {
                    Err(HookRefusal::Unreachable { event: event.name() })
                }
            }
        }
    }

    /// Queues `event`'s notice to the app's hook (if it has one); never waits.
    pub fn notify(&self, hooks: Option<&AppHooks>, event: HookEvent, mut call: HookCall) {
        let Some((hooks, url)) = hooks.and_then(|h| Some((h, event.url(h)?))) else { return };
        call.event = event.name();
        let notice =
            Notice { event, url: url.to_owned(), timeout: Duration::from_millis(u64::from(hooks.timeout_ms)), call };
        if self.notices.try_send(notice).is_err() {
            self.stats.count(event, Outcome::Dropped);
            tracing::warn!(event = event.name(), "hook notice queue full; notice dropped");
        }
    }

    /// A guard that sends `event`'s notice when dropped: held for as long as the
    /// session it tells of, so the notice goes exactly once, however the session ends.
    /// A guard for an app with no hook for `event` sends nothing and holds nothing
    /// ([`DoneNotice::is_armed`] is false): neither the call nor the app's rules.
    pub fn on_drop(&self, hooks: Option<AppHooks>, event: HookEvent, call: HookCall) -> DoneNotice {
        let armed = hooks.as_ref().is_some_and(|h| event.url(h).is_some());
        DoneNotice { hooks: self.clone(), app_hooks: hooks.filter(|_| armed), event, call: armed.then_some(call) }
    }
}

/// Asks the app's `event` hook (if it has one) whether to admit the session `call`
/// describes; once admitted, the session holds the returned guard, which sends `done`'s
/// notice when dropped. Every admitted session thus gets exactly one `_done`, even one
/// that fails to start afterwards.
pub async fn admit_session(
    rules: &super::tokens::Verifier,
    hooks: &Hooks,
    event: HookEvent,
    done: HookEvent,
    mut call: HookCall,
) -> Result<DoneNotice, HookRefusal> {
    // Rules never fetched: the token check before this one already refused.
    let app_hooks = rules.hooks(&call.app).await.ok().flatten();
    call.at_ms = now_ms();
    hooks.admit(app_hooks.as_ref(), event, call.clone()).await?;
    Ok(hooks.on_drop(app_hooks, done, call))
}

/// Sends a notice when dropped (see [`Hooks::on_drop`]).
pub struct DoneNotice {
    hooks: Hooks,
    app_hooks: Option<AppHooks>,
    event: HookEvent,
    call: Option<HookCall>,
}

impl DoneNotice {
    /// Whether dropping the guard sends a notice (the app has a hook for its event).
    pub fn is_armed(&self) -> bool {
        self.call.is_some()
    }

    /// Drops the guard without a notice.
    pub fn disarm(mut self) {
        self.call = None;
    }
}

impl Drop for DoneNotice {
    fn drop(&mut self) {
        if let Some(mut call) = self.call.take() {
            call.at_ms = now_ms();
            self.hooks.notify(self.app_hooks.as_ref(), self.event, call);
        }
    }
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    call: &HookCall,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    Ok(client.post(url).timeout(timeout).json(call).send().await?.status())
}

/// Sends queued notices, [`NOTICES_IN_FLIGHT`] at once, each tried up to
/// [`NOTICE_ATTEMPTS`] times until a 2xx.
async fn send_notices(client: reqwest::Client, stats: Arc<HookStats>, mut rx: mpsc::Receiver<Notice>) {
    let permits = Arc::new(Semaphore::new(NOTICES_IN_FLIGHT));
    while let Some(notice) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (client, stats) = (client.clone(), stats.clone());
        tokio::spawn(async move {
            let _permit = permit;
            for attempt in 0..NOTICE_ATTEMPTS {
                if let Some(pause) = attempt.checked_sub(1).and_then(|i| RETRY_PAUSES.get(i)) {
                    tokio::time::sleep(*pause).await;
                }
                match post(&client, &notice.url, notice.timeout, &notice.call).await {
                    Ok(status) if status.is_success() => {
                        stats.count(notice.event, Outcome::Ok);
                        return;
                    }
                    Ok(status) => {
                        stats.count(notice.event, Outcome::Denied);
                        tracing::debug!(
                            event = notice.event.name(),
                            status = status.as_u16(),
                            attempt,
                            "hook notice refused"
                        );
                    }
                    Err(e) => {
                        stats.count(notice.event, Outcome::Failed);
                        tracing::debug!(event = notice.event.name(), error = %e, attempt, "hook notice failed");
                    }
                }
            }
            tracing::warn!(event = notice.event.name(), session = notice.call.session, "hook notice given up");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A hook endpoint answering `statuses` in turn (then 200), recording the bodies.
    async fn endpoint(statuses: Vec<u16>) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(statuses.into_iter()));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post({
                let seen = seen.clone();
                move |axum::Json(body): axum::Json<serde_json::Value>| {
                    let seen = seen.clone();
                    let queue = queue.clone();
                    async move {
                        seen.lock().unwrap().push(body);
                        let status = queue.lock().unwrap().next().unwrap_or(200);
                        axum::http::StatusCode::from_u16(status).unwrap()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/hook"), seen)
    }

    fn call() -> HookCall {
        HookCall {
            event: "",
            edge: "edge-1".into(),
            client: "127.0.0.1:5000".into(),
            protocol: "rtmp",
            app: "live".into(),
            stream: Some("cam".into()),
            query: Some("token=x".into()),
            session: "s1".into(),
            token: None,
            at_ms: 1,
        }
    }

    fn hooks(url: &str, fail_open: bool) -> AppHooks {
        AppHooks {
            on_publish: Some(url.into()),
            on_publish_done: Some(url.into()),
            timeout_ms: 300,
            fail_open,
            ..AppHooks::default()
        }
    }

    #[tokio::test]
    async fn a_hook_admits_on_2xx_and_refuses_otherwise() {
        let (url, seen) = endpoint(vec![200, 403]).await;
        let h = Hooks::start(Arc::default());
        let app = hooks(&url, false);
        assert_eq!(h.admit(Some(&app), HookEvent::Publish, call()).await, Ok(()));
        assert_eq!(
            h.admit(Some(&app), HookEvent::Publish, call()).await,
            Err(HookRefusal::Denied { event: "on_publish", status: 403 })
        );
        // No hook for this event, or none for the app: admitted without a call.
        assert_eq!(h.admit(Some(&app), HookEvent::Play, call()).await, Ok(()));
        assert_eq!(h.admit(None, HookEvent::Publish, call()).await, Ok(()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0]["event"], "on_publish");
        assert_eq!((seen[0]["app"].as_str(), seen[0]["stream"].as_str()), (Some("live"), Some("cam")));
        assert_eq!(seen[0]["client"], "127.0.0.1:5000");
        assert_eq!(
            (h.stats.get(HookEvent::Publish, Outcome::Ok), h.stats.get(HookEvent::Publish, Outcome::Denied)),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn an_unreachable_hook_fails_closed_or_open_as_configured() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = format!("http://{closed}/hook");
        let h = Hooks::start(Arc::default());
        assert_eq!(
            h.admit(Some(&hooks(&url, false)), HookEvent::Publish, call()).await,
            Err(HookRefusal::Unreachable { event: "on_publish" })
        );
        assert_eq!(h.admit(Some(&hooks(&url, true)), HookEvent::Publish, call()).await, Ok(()));
        assert_eq!(h.stats.get(HookEvent::Publish, Outcome::Failed), 2);
    }

    #[tokio::test]
    async fn a_done_guard_with_no_hook_for_its_event_holds_nothing() {
        let h = Hooks::start(Arc::default());
        let app = hooks("http://127.0.0.1:9/hook", false);
        assert!(h.on_drop(Some(app.clone()), HookEvent::PublishDone, call()).is_armed());
        // The app has no `on_play_done`, or no hooks at all: nothing to send, nothing kept.
        for guard in
            [h.on_drop(Some(app), HookEvent::PlayDone, call()), h.on_drop(None, HookEvent::PublishDone, call())]
        {
            assert!(!guard.is_armed());
            assert!(guard.call.is_none() && guard.app_hooks.is_none());
        }
    }

    #[tokio::test]
    async fn a_done_notice_goes_once_when_its_guard_drops_and_is_retried() {
        let (url, seen) = endpoint(vec![500]).await;
        let h = Hooks::start(Arc::default());
        let guard = h.on_drop(Some(hooks(&url, false)), HookEvent::PublishDone, call());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.lock().unwrap().is_empty(), "nothing before the session ends");
        drop(guard);
        // The first try gets 500, the second (after 0.5 s) 200; no third.
        for _ in 0..50 {
            if h.stats.get(HookEvent::PublishDone, Outcome::Ok) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|b| b["event"] == "on_publish_done" && b["session"] == "s1"));
        assert_eq!(h.stats.get(HookEvent::PublishDone, Outcome::Denied), 1);
    }
}
