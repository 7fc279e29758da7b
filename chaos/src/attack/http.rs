//! HTTP attacks: write and object floods, writes without authorization, idle
//! connections, long-lived requests (SSE, HTTP-FLV), static-file escapes and the
//! traversal object name. Request floods use reqwest bound to the source address;
//! connection-holding ones speak HTTP/1.1 over a raw socket, one request each, so every
//! request holds exactly one connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect, join, start_delay, AttackKind, AttackParams, Stop, Tally, Targets, ATTEMPT_TIMEOUT};

/// How long an HTTP attack's connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of a response head read by a raw request.
const MAX_HEAD: usize = 8 * 1024;

fn client(params: &AttackParams) -> Option<reqwest::Client> {
    // A banned attacker's connects hang in SYN retransmission: give up on a connect
    // soon, so an attack stops within the harness's 30 s of being told to.
    let mut b =
        reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).connect_timeout(CONNECT_TIMEOUT).pool_max_idle_per_host(1);
    if let Some(ip) = params.source {
        b = b.local_address(ip);
    }
    b.build().ok()
}

fn record(tally: &Tally, res: &Result<reqwest::Response, reqwest::Error>) -> Option<u16> {
    tally.request();
    match res {
        Ok(r) => {
            let s = r.status().as_u16();
            tally.outcome(s.to_string());
            Some(s)
        }
        Err(e) if e.is_timeout() => {
            tally.outcome("timeout");
            None
        }
        Err(e) if e.is_connect() => {
            tally.outcome("connect refused");
            None
        }
        Err(_) => {
            tally.outcome("error");
            None
        }
    }
}

/// Pause between one client's requests so all clients together send `rate` per second.
fn request_gap(params: &AttackParams) -> Duration {
    if params.rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(f64::from(params.connections) / f64::from(params.rate))
    }
}

/// Large values (`write-flood-*`: 16 objects, 16 slots each, rewritten) or new objects
/// (`object-flood`: one small slot each), `connections` clients in parallel.
pub(super) async fn write_flood(
    kind: AttackKind,
    target: SocketAddr,
    auth: Option<String>,
    params: &AttackParams,
    tally: &Arc<Tally>,
    stop: Stop,
) {
    let Some(http) = client(params) else { return tally.outcome("no http client") };
    // One value shared by every request: the attacker's memory does not grow with
    // clients.
    let value =
        bytes::Bytes::from(serde_json::to_vec(&"x".repeat(params.value_bytes.saturating_sub(2))).unwrap_or_default());
    let prefix = super::prefix_of(kind);
    let gap = request_gap(params);
    let mut tasks = Vec::new();
    for c in 0..params.connections {
        let (http, value, auth, tally, mut stop) =
            (http.clone(), value.clone(), auth.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.done() {
                n += 1;
                let (url, body) = if kind == AttackKind::ObjectFlood {
                    (format!("http://{target}/shared-objects/{prefix}{c}-{n}/slots/v"), bytes::Bytes::from_static(b"1"))
                } else {
                    (format!("http://{target}/shared-objects/{prefix}{}/slots/s{}", c % 16, n % 16), value.clone())
                };
                let len = body.len();
                let mut req = http.put(url).header("content-type", "application/json").body(body);
                if let Some(t) = &auth {
                    req = req.bearer_auth(t);
                }
                let res = tokio::select! {
                    r = req.send() => r,
                    _ = stop.wait() => break,
                };
                tally.sent(len);
                if record(&tally, &res) == Some(429) || res.is_err() {
                    // Refused or failed: a real client backs off a little, the attack too.
                    if !stop.sleep(Duration::from_millis(100)).await {
                        break;
                    }
                }
                if !gap.is_zero() && !stop.sleep(gap).await {
                    break;
                }
            }
        }));
    }
    join(tasks, tally).await;
    if kind == AttackKind::WriteFloodOrigin {
        // The admin's flood stored persistent objects, which are data, not a leak: the
        // operator deletes them, and only then must the origins' memory come back (the
        // edge's flood wrote temporary objects, which go by themselves).
        for i in 0..16 {
            let mut req = http.delete(format!("http://{target}/shared-objects/{prefix}{i}"));
            if let Some(t) = &auth {
                req = req.bearer_auth(t);
            }
            let _ = req.send().await;
        }
    }
}

/// Overwrites, deletes and broadcasts on an object the admin wrote, through the edge,
/// with no credential and with a token scoped to another prefix; every 2xx is a
/// finding.
pub(super) async fn unauth_writes(
    targets: &Targets,
    scoped_token: Option<String>,
    params: &AttackParams,
    tally: &Arc<Tally>,
    mut stop: Stop,
) {
    let Some(http) = client(params) else { return tally.outcome("no http client") };
    if let (Some(o), Some(t)) = (targets.origin, &targets.admin_token) {
        let url = format!("http://{o}/shared-objects/victim/slots/owner");
        let _ = http.put(url).bearer_auth(t).json(&"admin").send().await;
    }
    let edge = targets.target;
    let mut round = 0u64;
    while !stop.done() {
        round += 1;
        for (creds, token) in [("no credential", None), ("a token for scoped-*", scoped_token.as_deref())] {
            if creds != "no credential" && token.is_none() {
                continue;
            }
            let reqs = [
                (
                    "PUT victim/owner",
                    http.put(format!("http://{edge}/shared-objects/victim/slots/owner")).json(&"attacker"),
                ),
                ("DELETE victim/owner", http.delete(format!("http://{edge}/shared-objects/victim/slots/owner"))),
                (
                    "POST victim/messages",
                    http.post(format!("http://{edge}/shared-objects/victim/messages"))
                        .json(&serde_json::json!({"handler": "spoof", "args": [round]})),
                ),
            ];
            for (what, mut req) in reqs {
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let res = tokio::select! {
                    r = req.send() => r,
                    _ = stop.wait() => return,
                };
                if let Some(s) = record(tally, &res) {
                    if (200..300).contains(&s) {
                        tally.finding(format!("{what} with {creds} through the edge: {s}"));
                    }
                }
            }
        }
        if !stop.sleep(params.interval.max(Duration::from_millis(10))).await {
            break;
        }
    }
}

/// TCP connections to the HTTP port that send nothing, held until the end.
pub(super) async fn idle(target: SocketAddr, params: &AttackParams, tally: &Arc<Tally>, stop: Stop) {
    let mut tasks = Vec::new();
    for i in 0..params.connections {
        let (tally, mut stop, source, rate) = (tally.clone(), stop.clone(), params.source, params.rate);
        tasks.push(tokio::spawn(async move {
            if !stop.sleep(start_delay(i, rate)).await {
                return;
            }
            let Some((mut s, mut guard)) = connect(target, source, &tally).await else { return };
            let mut buf = [0u8; 256];
            tokio::select! {
                r = s.read(&mut buf) => tally.outcome(match r { Ok(0) => "closed", Ok(_) => "answered", Err(_) => "reset" }),
                _ = stop.wait() => { guard.held(); tally.outcome("held"); }
            }
        }));
    }
    join(tasks, tally).await;
}

/// Sends `GET path` on `s` and reads the status line; `None` if the server closed or
/// answered garbage.
async fn raw_get(s: &mut tokio::net::TcpStream, host: SocketAddr, path: &str, tally: &Tally) -> Option<(u16, Vec<u8>)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    tally.sent(req.len());
    tally.request();
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let status = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    Some((status, head))
}

/// `sse-names`: one SSE subscription per distinct name, held; `flv-missing`: HTTP-FLV
/// requests for missing streams, each connection asking again after its answer.
pub(super) async fn long_requests(
    kind: AttackKind,
    target: SocketAddr,
    params: &AttackParams,
    tally: &Arc<Tally>,
    stop: Stop,
) {
    let mut tasks = Vec::new();
    for i in 0..params.connections {
        let (tally, mut stop, source, rate) = (tally.clone(), stop.clone(), params.source, params.rate);
        tasks.push(tokio::spawn(async move {
            if !stop.sleep(start_delay(i, rate)).await {
                return;
            }
            let mut n = 0u32;
            while !stop.done() {
                n += 1;
                let Some((mut s, mut guard)) = connect(target, source, &tally).await else {
                    if !stop.sleep(Duration::from_millis(500)).await {
                        return;
                    }
                    continue;
                };
                let path = match kind {
                    AttackKind::SseNames => format!("/shared-objects/sse-{i}-{n}/events"),
                    _ => format!("/live/missing-{i}-{n}.flv"),
                };
                let answer = tokio::select! {
                    a = raw_get(&mut s, target, &path, &tally) => a,
                    _ = stop.wait() => { guard.held(); tally.outcome("held, no answer"); return; }
                };
                match answer {
                    Some((status, _)) => tally.outcome(status.to_string()),
                    None => {
                        tally.outcome("closed");
                        continue;
                    }
                }
                // Hold the stream (SSE) or wait for the server to end it.
                let mut buf = vec![0u8; 4096];
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        },
                        _ = stop.wait() => { guard.held(); return; }
                    }
                }
            }
        }));
    }
    join(tasks, tally).await;
}

/// Files under `/webcast/` that must never be served: a symlink out of the root (to the
/// cluster secret, planted by the harness), `node_modules`, `test/`, dotfiles.
pub const WWW_FORBIDDEN: [&str; 5] = [
    "/webcast/leak",
    "/webcast/node_modules/pkg/package.json",
    "/webcast/test/secret.txt",
    "/webcast/.npmrc",
    "/webcast/.env",
];

pub(super) async fn www_escape(target: SocketAddr, params: &AttackParams, tally: &Arc<Tally>) {
    let Some(http) = client(params) else { return tally.outcome("no http client") };
    for path in WWW_FORBIDDEN {
        let res = http.get(format!("http://{target}{path}")).send().await;
        if let Some(s) = record(tally, &res) {
            if (200..300).contains(&s) {
                let body = match res {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let secret = if body.contains("chaos-cluster-secret") { " (the cluster secret)" } else { "" };
                tally.finding(format!("served {path}: {s}, {} bytes{secret}", body.len()));
            }
        }
    }
}

/// The object name that reached `/raft/forward` with the cluster secret; any answer
/// that is not a plain 4xx about the name is a finding (with the answer's start).
pub const TRAVERSAL_NAME: &str = "..%2F..%2Fraft%2Fforward%3F";

pub(super) async fn name_traversal(target: SocketAddr, params: &AttackParams, tally: &Arc<Tally>) {
    let Some(http) = client(params) else { return tally.outcome("no http client") };
    let url = format!("http://{target}/shared-objects/{TRAVERSAL_NAME}/messages");
    let res = http.post(url).json(&serde_json::json!({"handler": "x", "args": []})).send().await;
    if let Some(s) = record(tally, &res) {
        let body = match res {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let head: String = body.chars().take(160).collect();
        if !(400..500).contains(&s) || head.contains("forward") || head.contains("decode") {
            tally.finding(format!("{TRAVERSAL_NAME} answered {s}: {head}"));
        }
    }
}
