//! Attack generators: one per row of issue 12's table, each what a stranger on the
//! public ports could send, parametrized (connections, duration, rate, source address)
//! and bounded in time and in the attacker's own memory. They record what they sent and
//! what came back in an [`AttackReport`]; they judge nothing (the checkers do).
//!
//! Used by the abuse nemesis ([`crate::nemesis::Fault::Abuse`]) and by the CLI
//! (`raftcast-chaos abuse --attack NAME --target ADDR`). Knows sockets and HTTP, never
//! the cluster's processes.

mod http;
mod rtmp;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// Most connections one attack opens, whatever it is asked: the harness process has
/// 20 000 descriptors and the nodes must keep theirs; a larger request is clamped.
pub const MAX_CONNECTIONS: u32 = 12_000;
/// Largest slot value a write flood sends: just under the cluster's 64 KiB value limit
/// (the JSON string's quotes count).
pub const MAX_VALUE_BYTES: usize = 65_000;
/// How long one request or connection attempt of an attack may take before it counts
/// as `timeout` (the attack goes on with the next one).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most findings kept in one report (the rest are counted only).
const MAX_FINDINGS: usize = 32;

/// Every attack, by the name the CLI and the schedules use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// 64 KiB slot values from many clients through an edge (with a write token when
    /// the cluster issues them).
    WriteFloodEdge,
    /// 64 KiB slot values from many clients through an origin's admin API.
    WriteFloodOrigin,
    /// New objects as fast as they are accepted, through an edge (with a token).
    ObjectFlood,
    /// `PUT`/`DELETE` of an admin-written slot and `POST …/messages` through an edge with
    /// no credential (must get 401/403), and with a token scoped to another object.
    UnauthWrites,
    /// RTMP connections that finish the handshake, then drip 16 bytes every interval.
    RtmpDrip,
    /// RTMP connections that send part of the handshake and nothing more.
    RtmpHalfOpen,
    /// RTMP connections that send partial messages (many chunk streams) before `connect`.
    RtmpPartial,
    /// Many RTMP publishes of distinct streams.
    Publishes,
    /// TCP connections to an edge's HTTP port that send nothing.
    HttpIdle,
    /// SSE subscriptions on distinct object names through an edge.
    SseNames,
    /// Concurrent HTTP-FLV requests for streams nobody publishes.
    FlvMissing,
    /// Slow-drip connections to an origin's media-link port (a Hello that never ends).
    LinkDrip,
    /// A 16 MiB media frame on the media-link port before any Hello.
    LinkOversized,
    /// A symlink out of `--www`, `node_modules`, `test/` and dotfiles under `/webcast/`.
    WwwEscape,
    /// The object name `..%2F..%2Fraft%2Fforward%3F` in `POST …/messages` on an edge.
    NameTraversal,
}

/// Which listener an attack aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aim {
    EdgeHttp,
    EdgeRtmp,
    OriginHttp,
    OriginMedia,
}

impl AttackKind {
    pub const ALL: [AttackKind; 15] = [
        AttackKind::WriteFloodEdge,
        AttackKind::WriteFloodOrigin,
        AttackKind::ObjectFlood,
        AttackKind::UnauthWrites,
        AttackKind::RtmpDrip,
        AttackKind::RtmpHalfOpen,
        AttackKind::RtmpPartial,
        AttackKind::Publishes,
        AttackKind::HttpIdle,
        AttackKind::SseNames,
        AttackKind::FlvMissing,
        AttackKind::LinkDrip,
        AttackKind::LinkOversized,
        AttackKind::WwwEscape,
        AttackKind::NameTraversal,
    ];

    /// Whether the attack stores data through Raft (large values or many objects).
    pub fn floods_store(self) -> bool {
        matches!(self, AttackKind::WriteFloodEdge | AttackKind::WriteFloodOrigin | AttackKind::ObjectFlood)
    }

    pub fn name(&self) -> &'static str {
        match self {
            AttackKind::WriteFloodEdge => "write-flood-edge",
            AttackKind::WriteFloodOrigin => "write-flood-origin",
            AttackKind::ObjectFlood => "object-flood",
            AttackKind::UnauthWrites => "unauth-writes",
            AttackKind::RtmpDrip => "rtmp-drip",
            AttackKind::RtmpHalfOpen => "rtmp-half-open",
            AttackKind::RtmpPartial => "rtmp-partial",
            AttackKind::Publishes => "publishes",
            AttackKind::HttpIdle => "http-idle",
            AttackKind::SseNames => "sse-names",
            AttackKind::FlvMissing => "flv-missing",
            AttackKind::LinkDrip => "link-drip",
            AttackKind::LinkOversized => "link-oversized",
            AttackKind::WwwEscape => "www-escape",
            AttackKind::NameTraversal => "name-traversal",
        }
    }

    pub fn parse(name: &str) -> Option<AttackKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn aim(&self) -> Aim {
        match self {
            AttackKind::WriteFloodOrigin => Aim::OriginHttp,
            AttackKind::LinkDrip | AttackKind::LinkOversized => Aim::OriginMedia,
            AttackKind::RtmpDrip | AttackKind::RtmpHalfOpen | AttackKind::RtmpPartial | AttackKind::Publishes => {
                Aim::EdgeRtmp
            }
            _ => Aim::EdgeHttp,
        }
    }

    /// The parameters the issue's table used, scaled to what fits one run here
    /// (`full`: the table's counts; otherwise a smoke-sized share of them).
    pub fn default_params(&self, full: bool) -> AttackParams {
        let (connections, interval_ms) = match (self, full) {
            (AttackKind::WriteFloodEdge | AttackKind::WriteFloodOrigin, _) => (16, 0),
            (AttackKind::ObjectFlood, _) => (32, 0),
            (AttackKind::UnauthWrites, _) => (4, 50),
            (AttackKind::RtmpDrip, true) => (9_999, 20_000),
            (AttackKind::RtmpDrip, false) => (2_000, 20_000),
            (AttackKind::RtmpHalfOpen, true) => (10_000, 0),
            (AttackKind::RtmpHalfOpen, false) => (2_000, 0),
            (AttackKind::RtmpPartial, _) => (20, 0),
            (AttackKind::Publishes, true) => (2_400, 0),
            (AttackKind::Publishes, false) => (300, 0),
            (AttackKind::HttpIdle, true) => (11_000, 0),
            (AttackKind::HttpIdle, false) => (2_000, 0),
            (AttackKind::SseNames, true) => (3_000, 0),
            (AttackKind::SseNames, false) => (1_000, 0),
            (AttackKind::FlvMissing, true) => (3_000, 0),
            (AttackKind::FlvMissing, false) => (1_000, 0),
            (AttackKind::LinkDrip, _) => (300, 2_000),
            (AttackKind::LinkOversized, _) => (4, 0),
            (AttackKind::WwwEscape | AttackKind::NameTraversal, _) => (1, 200),
        };
        AttackParams {
            connections,
            duration: Duration::from_secs(if full { 60 } else { 8 }),
            rate: 0,
            interval: Duration::from_millis(interval_ms),
            source: None,
            value_bytes: MAX_VALUE_BYTES,
            partial_bytes: 16 * 1024 * 1024,
        }
    }
}

/// How hard and how long.
#[derive(Debug, Clone, Serialize)]
pub struct AttackParams {
    /// Concurrent clients or connections (clamped to [`MAX_CONNECTIONS`]).
    pub connections: u32,
    /// The attack stops after this long (or earlier when told to).
    pub duration: Duration,
    /// New connections (connection attacks) or requests (request attacks) per second
    /// over all clients; 0: as fast as they go.
    pub rate: u32,
    /// Drip interval (drip attacks), pause between requests (probing attacks).
    pub interval: Duration,
    /// Bind this address before connecting (the attacker's own address).
    pub source: Option<IpAddr>,
    /// Slot value size of the write floods.
    pub value_bytes: usize,
    /// Bytes of partial messages one `rtmp-partial` connection sends, and of the frame
    /// `link-oversized` sends.
    pub partial_bytes: u64,
}

/// Where the attack goes.
#[derive(Debug, Clone)]
pub struct Targets {
    /// The listener attacked.
    pub target: SocketAddr,
    /// An origin's admin API, for write tokens and the victim slot (optional).
    pub origin: Option<SocketAddr>,
    pub admin_token: Option<String>,
}

/// What one attack sent and what it got back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttackReport {
    pub attack: String,
    pub target: String,
    pub source: Option<String>,
    pub params_connections: u32,
    /// Connections the attack had open at once, at most.
    pub peak_open: u64,
    /// Connections established (socket attacks and publishes; the HTTP request floods
    /// go through a client pool and count `requests` only).
    pub connections: u64,
    /// Connection attempts refused, reset or timed out.
    pub connect_failures: u64,
    /// Requests (HTTP) or messages sent.
    pub requests: u64,
    /// Answers by HTTP status or outcome (`closed`, `timeout`, `error`, `held`).
    pub outcomes: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    /// Connections the server closed while the attack held them.
    pub closed_by_server: u64,
    /// Connections still open when the attack stopped.
    pub held_at_end: u64,
    /// Whether a write token could be issued (`POST /tokens`).
    pub token: bool,
    /// What got through that should not have (served files, accepted writes…).
    pub findings: Vec<String>,
    pub secs: f64,
}

/// Counters the tasks of one attack share.
#[derive(Default)]
pub(crate) struct Tally {
    open: AtomicU64,
    peak_open: AtomicU64,
    connections: AtomicU64,
    connect_failures: AtomicU64,
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    closed_by_server: AtomicU64,
    held_at_end: AtomicU64,
    outcomes: Mutex<BTreeMap<String, u64>>,
    findings: Mutex<Vec<String>>,
}

impl Tally {
    pub(crate) fn outcome(&self, what: impl Into<String>) {
        *self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).entry(what.into()).or_default() += 1;
    }

    pub(crate) fn finding(&self, what: String) {
        let mut f = self.findings.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < MAX_FINDINGS && !f.contains(&what) {
            f.push(what);
        }
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let now = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_open.fetch_max(now, Ordering::Relaxed);
    }

    pub(crate) fn closed(&self, by_server: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if by_server {
            self.closed_by_server.fetch_add(1, Ordering::Relaxed);
        } else {
            self.held_at_end.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connect_failed(&self, why: &str) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.outcome(format!("connect: {why}"));
    }
}

/// When an attack's tasks must stop: its deadline or the stop signal.
#[derive(Clone)]
pub(crate) struct Stop {
    deadline: tokio::time::Instant,
    rx: watch::Receiver<bool>,
}

impl Stop {
    pub(crate) fn done(&self) -> bool {
        *self.rx.borrow() || tokio::time::Instant::now() >= self.deadline
    }

    /// Resolves when the attack must stop.
    pub(crate) async fn wait(&mut self) {
        let deadline = self.deadline;
        let rx = &mut self.rx;
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = async { while !*rx.borrow() { if rx.changed().await.is_err() { std::future::pending::<()>().await } } } => {}
        }
    }

    /// Sleeps `d`; false when the attack must stop first.
    pub(crate) async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.done(),
            _ = self.wait() => false,
        }
    }
}

/// Paces starts to `rate` per second over all tasks (0: no pacing).
pub(crate) fn start_delay(i: u32, rate: u32) -> Duration {
    if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(f64::from(i) / f64::from(rate))
    }
}

/// A TCP connection from `source` (when given) to `target`, counted in `tally`; the
/// returned guard uncounts it when dropped.
pub(crate) async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    tally: &Arc<Tally>,
) -> Option<(TcpStream, OpenGuard)> {
    let attempt = async {
        let socket = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(target).await
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(Ok(s)) => {
            tally.opened();
            Some((s, OpenGuard { tally: tally.clone(), by_server: true }))
        }
        Ok(Err(e)) => {
            tally.connect_failed(&e.kind().to_string());
            None
        }
        Err(_) => {
            tally.connect_failed("timeout");
            None
        }
    }
}

/// Counts a connection as closed when dropped: by the server unless [`OpenGuard::held`]
/// was called (the attack itself let go at its end).
pub(crate) struct OpenGuard {
    tally: Arc<Tally>,
    by_server: bool,
}

impl OpenGuard {
    pub(crate) fn held(&mut self) {
        self.by_server = false;
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.tally.closed(self.by_server);
    }
}

/// Issues a write token for `prefix` through `origin`'s admin API (`POST /tokens`);
/// `None` when the cluster does not issue tokens (today's code answers 404).
pub async fn issue_token(origin: SocketAddr, admin_token: &str, prefix: &str) -> Option<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().ok()?;
    let body = serde_json::json!({ "object_prefix": prefix, "rights": "write", "ttl_secs": 600 });
    let res = client.post(format!("http://{origin}/tokens")).bearer_auth(admin_token).json(&body).send().await.ok()?;
    if !res.status().is_success() {
        return None;
    }
    let v: serde_json::Value = res.json().await.ok()?;
    v["token"].as_str().map(str::to_string)
}

/// Runs `kind` until its duration is over or `stop` turns true.
pub async fn run(
    kind: AttackKind,
    targets: Targets,
    params: AttackParams,
    stop: watch::Receiver<bool>,
) -> AttackReport {
    let started = Instant::now();
    let mut params = params;
    params.connections = params.connections.clamp(1, MAX_CONNECTIONS);
    params.value_bytes = params.value_bytes.min(MAX_VALUE_BYTES);
    let tally = Arc::new(Tally::default());
    let stop = Stop { deadline: tokio::time::Instant::now() + params.duration, rx: stop };
    let token = match kind {
        AttackKind::WriteFloodEdge | AttackKind::ObjectFlood | AttackKind::UnauthWrites => {
            match (targets.origin, &targets.admin_token) {
                (Some(o), Some(t)) => issue_token(o, t, prefix_of(kind)).await,
                _ => None,
            }
        }
        _ => None,
    };
    match kind {
        AttackKind::WriteFloodEdge | AttackKind::WriteFloodOrigin | AttackKind::ObjectFlood => {
            let auth = if kind == AttackKind::WriteFloodOrigin { targets.admin_token.clone() } else { token.clone() };
            http::write_flood(kind, targets.target, auth, &params, &tally, stop).await
        }
        AttackKind::UnauthWrites => http::unauth_writes(&targets, token.clone(), &params, &tally, stop).await,
        AttackKind::HttpIdle => http::idle(targets.target, &params, &tally, stop).await,
        AttackKind::SseNames | AttackKind::FlvMissing => {
            http::long_requests(kind, targets.target, &params, &tally, stop).await
        }
        AttackKind::WwwEscape => http::www_escape(targets.target, &params, &tally).await,
        AttackKind::NameTraversal => http::name_traversal(targets.target, &params, &tally).await,
        AttackKind::RtmpDrip | AttackKind::RtmpHalfOpen | AttackKind::RtmpPartial => {
            rtmp::hold(kind, targets.target, &params, &tally, stop).await
        }
        AttackKind::Publishes => rtmp::publishes(targets.target, &params, &tally, stop).await,
        AttackKind::LinkDrip | AttackKind::LinkOversized => {
            rtmp::link(kind, targets.target, &params, &tally, stop).await
        }
    }
    let outcomes = tally.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let findings = tally.findings.lock().unwrap_or_else(|p| p.into_inner()).clone();
    AttackReport {
        attack: kind.name().into(),
        target: targets.target.to_string(),
        source: params.source.map(|s| s.to_string()),
        params_connections: params.connections,
        peak_open: tally.peak_open.load(Ordering::Relaxed),
        connections: tally.connections.load(Ordering::Relaxed),
        connect_failures: tally.connect_failures.load(Ordering::Relaxed),
        requests: tally.requests.load(Ordering::Relaxed),
        outcomes,
        bytes_sent: tally.bytes_sent.load(Ordering::Relaxed),
        closed_by_server: tally.closed_by_server.load(Ordering::Relaxed),
        held_at_end: tally.held_at_end.load(Ordering::Relaxed),
        token: token.is_some(),
        findings,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// The object-name prefix each token-using attack writes under.
pub fn prefix_of(kind: AttackKind) -> &'static str {
    match kind {
        AttackKind::ObjectFlood => "objflood-",
        AttackKind::UnauthWrites => "scoped-",
        _ => "flood-",
    }
}

/// Joins the attack's tasks; a task that panicked is an outcome, not a crash.
pub(crate) async fn join(tasks: Vec<tokio::task::JoinHandle<()>>, tally: &Tally) {
    for t in tasks {
        if t.await.is_err() {
            tally.outcome("task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attack_has_a_name_that_parses_back() {
        for k in AttackKind::ALL {
            assert_eq!(AttackKind::parse(k.name()), Some(k));
        }
        assert_eq!(AttackKind::parse("nope"), None);
    }

    #[test]
    fn pacing_spreads_starts_over_a_second_per_rate() {
        assert_eq!(start_delay(5, 0), Duration::ZERO);
        assert_eq!(start_delay(10, 10), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_connection_attack_holds_what_a_silent_server_accepts_and_counts_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let (_tx, rx) = watch::channel(false);
        let mut p = AttackKind::HttpIdle.default_params(false);
        p.connections = 5;
        p.duration = Duration::from_millis(300);
        p.source = Some("127.0.0.1".parse().unwrap());
        let r = run(AttackKind::HttpIdle, Targets { target: addr, origin: None, admin_token: None }, p, rx).await;
        accept.abort();
        assert_eq!(r.connections, 5);
        assert_eq!(r.peak_open, 5);
        assert_eq!(r.held_at_end, 5);
        assert_eq!(r.closed_by_server, 0);
    }
}
