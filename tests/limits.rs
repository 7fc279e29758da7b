//! Resource caps on every listener (issue 12): for each cap, a flood from one source
//! address (a client socket bound to 127.0.0.2 — loopback answers any 127.x source) is
//! refused or closed, while a client from 127.0.0.1 still publishes and plays. Also:
//! a drip client is closed, a partial-message flood does not grow the edge's memory
//! past a bound, and a symlink inside `--www` is not served.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{eventually, Cluster};
use edges::EdgeProc;
use raftcast::bench::client::RtmpClient;
use raftcast::bench::synth;
use raftcast::rtmp::handshake::{Handshake, Progress};
use raftcast::rtmp::session::{ClientConfig, ClientEvent, ClientSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The flood's source address.
const STRANGER: &str = "127.0.0.2";

/// A client socket bound to `source` (any 127.x address answers on loopback).
fn socket_from(source: &str) -> TcpSocket {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0)).unwrap();
    socket
}

async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    socket_from(source).connect(addr).await.unwrap()
}

/// Whether a connection from `source` is refused at accept within `within`: closed or
/// reset. The edge resets what it refuses, and the reset can come before the connect
/// is seen to complete, so the connect itself may fail with it.
async fn refused_at_accept(source: &str, addr: SocketAddr, within: Duration) -> bool {
    match socket_from(source).connect(addr).await {
        Ok(mut s) => closed_within(&mut s, within).await,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Whether the server closes `socket` (end of stream or reset) within `within`,
/// draining what it sends meanwhile.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let wait = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, wait).await.is_ok()
}

async fn handshake(socket: &mut TcpStream) {
    let (mut hs, c0c1) = Handshake::client().unwrap();
    socket.write_all(&c0c1).await.unwrap();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = socket.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed during the handshake");
        match hs.feed(&buf[..n]).unwrap() {
            Progress::InProgress { send } => socket.write_all(&send).await.unwrap(),
            Progress::Done { send, .. } => {
                socket.write_all(&send).await.unwrap();
                return;
            }
        }
    }
}

/// The bytes of a `connect` command for app `live`.
fn connect_command() -> Bytes {
    let mut session = ClientSession::new(ClientConfig::default());
    session.connect("live", "rtmp://127.0.0.1/live").unwrap();
    session.take_output()
}

/// A type-0 chunk header on csid 6 starting a video message of `len` bytes.
fn message_start(len: u32) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(6);
    out.put_uint(0, 3);
    out.put_uint(u64::from(len), 3);
    out.put_u8(9);
    out.put_u32_le(1);
    out.to_vec()
}

/// A video message of `len` bytes announced, and `payload` bytes of it sent, in
/// 64 KiB chunks (after a Set Chunk Size of 65536).
fn partial_message(len: u32, payload: usize) -> Vec<u8> {
    let mut out = set_chunk_size(65536);
    out.extend(message_start(len));
    let mut left = payload;
    let mut first = true;
    while left > 0 {
        if !first {
            out.push(0xC6);
        }
        first = false;
        let n = left.min(65536);
        out.extend(std::iter::repeat_n(0u8, n));
        left -= n;
    }
    out
}

/// A Set Chunk Size message (csid 2) raising the client's chunk size to `size`.
fn set_chunk_size(size: u32) -> Vec<u8> {
    let mut out = vec![0x02, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
    out.extend_from_slice(&size.to_be_bytes());
    out
}

/// A publisher and a player from 127.0.0.1 through `edge`: the player must get video.
async fn canary(edge: SocketAddr, name: &str) {
    let mut publisher = RtmpClient::connect(edge, "live").await.expect("the canary publisher connects");
    let id = publisher.publish(name).await.expect("the canary publish is accepted");
    let (meta, avc, aac) = synth::headers();
    publisher.send_data(id, 0, meta).await.unwrap();
    publisher.send_video(id, 0, avc).await.unwrap();
    publisher.send_audio(id, 0, aac).await.unwrap();
    let feed = tokio::spawn(async move {
        let keyframe = Bytes::from_static(&[0x17, 0x01, 0, 0, 0, 0, 0, 0, 5, 0x65, 0x88, 0x84, 0x00, 0x33]);
        for ts in (40..).step_by(40) {
            if publisher.send_video(id, ts, keyframe.clone()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    let mut player = RtmpClient::connect(edge, "live").await.expect("the canary player connects");
    player.play(name).await.expect("the canary play is accepted");
    let got_video = async {
        loop {
            match player.next_event().await {
                Ok(Some(ClientEvent::Video { payload, .. })) if payload.first() == Some(&0x17) && payload[1] == 1 => {
                    return true
                }
                Ok(Some(_)) => {}
                _ => return false,
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(10), got_video).await;
    feed.abort();
    assert_eq!(got.ok(), Some(true), "the canary player on {edge} gets video");
}

/// Waits until the edge's log says `what` (it is written as the connection task ends,
/// just after the socket closes).
async fn edge_logs(edge: &EdgeProc, what: &str) {
    eventually(Duration::from_secs(5), &format!("the edge to log {what:?}"), || async {
        let log = std::fs::read_to_string(&edge.log).unwrap();
        log.contains(what).then_some(())
    })
    .await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_floods_from_one_address_leave_another_publishing_and_playing() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(
        &c,
        "edge-1",
        &[
            "--max-connections-per-address",
            "12",
            "--max-handshakes-per-address",
            "4",
            "--max-unstarted-per-address",
            "6",
            "--max-publishes-per-address",
            "1",
            "--start-timeout-ms",
            "60000",
            "--idle-timeout-ms",
            "1500",
        ],
    )
    .await;

    // Half-open handshakes: four are held, the fifth is closed at once.
    let mut half_open = Vec::new();
    for _ in 0..4 {
        half_open.push(connect_from(STRANGER, edge.rtmp).await);
    }
    assert!(
        refused_at_accept(STRANGER, edge.rtmp, Duration::from_millis(700)).await,
        "a fifth handshake from one address is refused at once"
    );
    canary(edge.rtmp, "canary-1").await;
    drop(half_open);
    eventually(Duration::from_secs(5), "the half-open handshakes to be released", || async {
        let held = edge.metric("edge_limit_in_use{class=\"rtmp_handshakes\"}").await;
        (held == 0.0).then_some(())
    })
    .await;

    // Sessions that never start: six are held, the seventh is refused after its handshake.
    let mut unstarted = Vec::new();
    for _ in 0..6 {
        let mut s = connect_from(STRANGER, edge.rtmp).await;
        handshake(&mut s).await;
        unstarted.push(s);
    }
    let mut seventh = connect_from(STRANGER, edge.rtmp).await;
    handshake(&mut seventh).await;
    // At once: well before the idle timeout (1.5 s) would close it anyway.
    assert!(
        closed_within(&mut seventh, Duration::from_millis(700)).await,
        "a seventh unstarted session is refused at once"
    );
    canary(edge.rtmp, "canary-2").await;
    drop(unstarted);
    eventually(Duration::from_secs(5), "the unstarted sessions to be released", || async {
        let held = edge.metric("edge_limit_in_use{class=\"rtmp_unstarted\"}").await;
        (held == 0.0).then_some(())
    })
    .await;

    // A drip: one byte every 200 ms that never completes a message. Bytes arrive far
    // more often than the idle timeout, but they are not progress.
    let mut drip = connect_from(STRANGER, edge.rtmp).await;
    handshake(&mut drip).await;
    let started = std::time::Instant::now();
    let command = connect_command();
    let body = &command[..command.len() - 1];
    let mut closed = false;
    for byte in body.iter().cycle().take(100) {
        if drip.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut drip, Duration::from_millis(200)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the drip client is closed");
    assert!(started.elapsed() < Duration::from_secs(6), "closed within the idle timeout ({:?})", started.elapsed());

    // Publishes: one per address here; a second from the same address is refused.
    let mut first = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    first.publish("one").await.expect("the first publish is accepted");
    let mut second = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
    let refused = second.publish("two").await.expect_err("a second publish from one address is refused");
    assert!(refused.to_string().contains("Failed"), "{refused}");
    drop((first, second));

    let metrics = edge.metrics().await;
    for class in ["rtmp_handshakes", "rtmp_unstarted", "publishes"] {
        let series = format!("edge_limit_refused_total{{class=\"{class}\",scope=\"address\"}}");
        let n = edges::metric_value(&metrics, &series).unwrap_or(0.0);
        assert!(n >= 1.0, "{series} counts the refusal:\n{metrics}");
    }
    edge_logs(&edge, "no complete message for").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unstarted_session_that_sends_only_control_messages_is_closed() {
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(&c, "edge-1", &["--start-timeout-ms", "1000"]).await;
    let mut s = connect_from(STRANGER, edge.rtmp).await;
    handshake(&mut s).await;
    s.write_all(&connect_command()).await.unwrap();
    // Whole messages (progress for the idle timeout), but neither publish nor play.
    let started = std::time::Instant::now();
    let mut closed = false;
    for _ in 0..50 {
        if s.write_all(&set_chunk_size(4096)).await.is_err() || closed_within(&mut s, Duration::from_millis(100)).await
        {
            closed = true;
            break;
        }
    }
    assert!(closed && started.elapsed() < Duration::from_secs(4), "closed after the start timeout");
    edge_logs(&edge, "neither published, played nor used a shared object").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_message_flood_stays_within_the_byte_budget() {
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(
        &c,
        "edge-1",
        &["--max-partial-bytes", "8388608", "--max-partial-bytes-per-connection", "4194304"],
    )
    .await;
    let before = rss_kib(edge.pid());

    // Before `connect`: each connection may hold 64 KiB of a message; more closes it.
    let mut before_connect = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from(STRANGER, edge.rtmp).await;
        handshake(&mut s).await;
        let _ = s.write_all(&partial_message(16 * 1024 * 1024 - 1, 256 * 1024)).await;
        before_connect.push(s);
    }
    for s in &mut before_connect {
        assert!(closed_within(s, Duration::from_secs(5)).await, "over 64 KiB before connect closes the connection");
    }

    // After `connect` the bound is 4 MiB each, 8 MiB over all connections: the third
    // connection holding 3 MiB goes over the budget and only it is closed.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut client = RtmpClient::connect(edge.rtmp, "live").await.unwrap();
        let sent = client.send_raw(&partial_message(16 * 1024 * 1024 - 1, 3 << 20)).await;
        if i < 2 {
            sent.expect("within the budget");
            held.push(client);
        } else {
            let gone = async {
                loop {
                    match client.next_event().await {
                        Ok(Some(_)) => {}
                        _ => return,
                    }
                }
            };
            assert!(tokio::time::timeout(Duration::from_secs(5), gone).await.is_ok(), "the third is closed");
        }
    }
    edge_logs(&edge, "over the edge's byte budget").await;
    let partial = edge.metric("edge_rtmp_partial_bytes").await;
    assert!(partial > 5.0 * 1024.0 * 1024.0 && partial <= 8.0 * 1024.0 * 1024.0, "{partial} bytes held");
    let after = rss_kib(edge.pid());
    eprintln!(
        "edge RSS {before} KiB before the partial-message floods, {after} KiB after (partial bytes held {partial})"
    );
    // 20 floods of 256 KiB plus 6 MiB held: without the caps this was ≈43 MiB a connection.
    assert!(after < before + 64 * 1024, "edge RSS grew from {before} KiB to {after} KiB");
    canary(edge.rtmp, "canary").await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_floods_from_one_address_leave_another_served() {
    let c = Cluster::start(1).await;
    let edge = EdgeProc::start(
        &c,
        "edge-1",
        &[
            "--http-max-connections-per-address",
            "10",
            "--http-header-timeout-ms",
            "1000",
            "--http-body-timeout-ms",
            "1000",
            "--max-long-requests-per-address",
            "3",
            "--play-wait-ms",
            "4000",
        ],
    )
    .await;

    // Idle connections: ten are held, the eleventh is closed at once, and the ten are
    // closed by the header timeout.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(connect_from(STRANGER, edge.http).await);
    }
    assert!(
        refused_at_accept(STRANGER, edge.http, Duration::from_millis(500)).await,
        "the eleventh connection is refused"
    );
    let health = reqwest::get(format!("http://{}/health", edge.http)).await.unwrap();
    assert!(health.status().is_success(), "127.0.0.1 is still served");
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(3)).await, "an idle connection is closed by the header timeout");
    }

    // A head that drips is closed by the same timeout.
    let mut slow_head = connect_from(STRANGER, edge.http).await;
    slow_head.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    assert!(closed_within(&mut slow_head, Duration::from_secs(3)).await, "an unfinished head is closed");

    // A body that never arrives whole.
    let mut slow_body = connect_from(STRANGER, edge.http).await;
    slow_body
        .write_all(b"POST /shared-objects/x/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"handler\"")
        .await
        .unwrap();
    assert!(closed_within(&mut slow_body, Duration::from_secs(4)).await, "an unfinished body is cut off");

    // Long-lived requests: plays of missing streams wait; three per address.
    let mut waiting = Vec::new();
    for i in 0..3 {
        let mut s = connect_from(STRANGER, edge.http).await;
        s.write_all(format!("GET /live/missing-{i}.flv HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        waiting.push(s);
    }
    // Let the three reach their handler before the fourth asks.
    eventually(Duration::from_secs(5), "three long requests held", || async {
        let held = edge.metric("edge_limit_in_use{class=\"http_long_requests\"}").await;
        (held >= 3.0).then_some(())
    })
    .await;
    let mut fourth = connect_from(STRANGER, edge.http).await;
    fourth.write_all(b"GET /live/missing-4.flv HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 429"), "the fourth long request is refused: {answer}");
    let mine = reqwest::get(format!("http://{}/shared-objects/chat/events", edge.http)).await.unwrap();
    assert_eq!(mine.status(), 200, "127.0.0.1 still opens an SSE stream");
    drop(mine);
    canary(edge.rtmp, "canary").await;
    drop(waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_oversized_link_peer_holds_no_link_slot() {
    let c = Cluster::start_with(1, &["--link-max-unauthenticated-per-address", "4", "--link-hello-timeout-ms", "1000"])
        .await;
    let media = c.origins[&1].media;
    // Silent peers: four wait for their Hello deadline, the fifth is closed at once.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect_from(STRANGER, media).await);
    }
    let mut fifth = connect_from(STRANGER, media).await;
    assert!(closed_within(&mut fifth, Duration::from_millis(500)).await, "a fifth silent peer is refused");
    // A drip does not reset the Hello deadline.
    let started = std::time::Instant::now();
    let mut drip = silent.pop().unwrap();
    let mut closed = false;
    // A control frame of 64 bytes, one byte at a time: never complete in this loop.
    let dripped = [&[0u8, 0, 0, 64, 0x01][..], &[7u8; 64]].concat();
    for byte in dripped.iter().take(40) {
        if drip.write_all(&[*byte]).await.is_err() || closed_within(&mut drip, Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed && started.elapsed() < Duration::from_secs(3), "a dripping peer is closed at the Hello deadline");
    for s in &mut silent {
        assert!(closed_within(s, Duration::from_secs(3)).await, "a silent peer is closed at the Hello deadline");
    }
    // A 16 MiB frame before Hello is refused from its length prefix.
    let mut big = connect_from(STRANGER, media).await;
    let mut frame = (16u32 * 1024 * 1024).to_be_bytes().to_vec();
    frame.push(0x02);
    big.write_all(&frame).await.unwrap();
    assert!(closed_within(&mut big, Duration::from_millis(500)).await, "a large frame before Hello is refused");

    // While a stranger holds the whole unauthenticated pool, a real edge still links.
    let mut flood = Vec::new();
    for _ in 0..4 {
        flood.push(connect_from(STRANGER, media).await);
    }
    let edge = EdgeProc::start(&c, "edge-1", &[]).await;
    canary(edge.rtmp, "canary").await;
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn www_serves_only_the_page_and_never_follows_a_link_out_of_its_folder() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.js"), "the cluster secret").unwrap();
    let www = tempfile::tempdir().unwrap();
    let root = www.path();
    std::fs::write(root.join("index.html"), "<html>page</html>").unwrap();
    std::fs::write(root.join("app.js"), "app").unwrap();
    std::fs::write(root.join(".npmrc"), "token").unwrap();
    std::fs::write(root.join("package.json"), "{}").unwrap();
    std::fs::create_dir_all(root.join("test")).unwrap();
    std::fs::write(root.join("test/chat.mjs"), "test").unwrap();
    std::fs::create_dir_all(root.join("node_modules/lib/dist")).unwrap();
    std::fs::write(root.join("node_modules/lib/dist/lib.js"), "lib").unwrap();
    std::fs::write(root.join("node_modules/lib/package.json"), "{}").unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.js"), root.join("leak.js")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
    std::os::unix::fs::symlink(root.join("app.js"), root.join("alias.js")).unwrap();

    let c = Cluster::start(1).await;
    let dir = root.to_str().unwrap();
    let edge = EdgeProc::start(&c, "edge-1", &["--www", dir]).await;
    let get = |path: &str| {
        let url = format!("http://{}/webcast/{path}", edge.http);
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("").await, (200, "<html>page</html>".to_owned()));
    assert_eq!(get("app.js").await, (200, "app".to_owned()));
    assert_eq!(get("alias.js").await, (200, "app".to_owned()), "a link inside the folder is fine");
    assert_eq!(get("node_modules/lib/dist/lib.js").await, (200, "lib".to_owned()));
    for refused in [
        "leak.js",
        "out/secret.js",
        ".npmrc",
        "package.json",
        "test/chat.mjs",
        "node_modules/lib/package.json",
        "..%2F..%2Fetc%2Fpasswd",
    ] {
        let (status, body) = get(refused).await;
        assert_eq!(status, 404, "{refused} is not served: {body}");
        assert!(!body.contains("secret") && !body.contains("token"), "{refused}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_on_an_origin_leaves_the_members_their_reserve() {
    // 40 connections in all, the last 10 kept for the members' addresses (127.0.0.1).
    let c = Cluster::start_with(3, &["--http-max-connections", "40"]).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let target = c.origins.keys().copied().find(|id| *id != leader).unwrap();
    let http = c.origins[&target].http;
    // Strangers fill their share (30, less the members' pooled connections) and are
    // then refused at accept.
    let mut flood = Vec::new();
    let mut refused = false;
    for i in 0..40u32 {
        let Ok(mut s) = socket_from(&format!("127.0.3.{}", i + 1)).connect(http).await else {
            refused = true; // reset before the connect was seen to complete
            break;
        };
        if closed_within(&mut s, Duration::from_millis(200)).await {
            refused = true;
            break;
        }
        flood.push(s);
    }
    assert!(refused, "the flood is refused once the strangers' share is full ({} held)", flood.len());
    // A member's address still gets new connections: a fresh client, and a write
    // through this follower (forwarded to the leader over Raft's own connections).
    let fresh = reqwest::Client::new();
    let health = fresh.get(format!("http://{http}/health")).send().await.expect("a member's address connects");
    assert!(health.status().is_success());
    let (status, body) = c.put_slot(target, "reserve", "s", &serde_json::json!(1), None).await.unwrap();
    assert!(status.is_success(), "a write through the flooded origin commits: {status} {body}");
    drop(flood);
}

/// Whether the edge answers a TCP connect from `source` within `within`: the connect
/// completes, or is reset (a refused connection is reset, and a new connect can meet
/// the reset of the last one on the same port). A banned address's SYNs are dropped,
/// so its connect does neither.
async fn connects_from(source: &str, addr: SocketAddr, within: Duration) -> bool {
    match tokio::time::timeout(within, socket_from(source).connect(addr)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Err(_) => false,
    }
}

/// One address that keeps reconnecting as fast as it is refused is banned below accept:
/// the edge's socket filter drops its SYNs, so its connects stop completing, while
/// another address connects and a canary publishes and plays; when the ban runs out
/// it connects again. With bans off (`--ban-refusals-per-second 0`) the flood's
/// connects all complete, and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_refused_too_often_is_banned_below_accept_and_others_are_not() {
    let c = Cluster::start(3).await;
    let edge = EdgeProc::start(
        &c,
        "edge-1",
        &["--max-handshakes-per-address", "4", "--ban-refusals-per-second", "50", "--ban-seconds", "3"],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(STRANGER, edge.rtmp).await);
    }
    // Reconnect as fast as the edge refuses, for up to 2 s: the ban stops it.
    let started = std::time::Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(2) {
        if !connects_from(STRANGER, edge.rtmp, Duration::from_millis(300)).await {
            break;
        }
        refused += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(2), "still connecting after {refused} refusals: not banned");
    assert!(refused > 50, "banned after {refused} refusals, fewer than the policy's 50 a second");
    let banned_at = std::time::Instant::now();
    assert!(!connects_from(STRANGER, edge.rtmp, Duration::from_millis(500)).await, "the banned address connects");
    assert!(connects_from("127.0.0.3", edge.rtmp, Duration::from_millis(500)).await, "another address is banned too");
    canary(edge.rtmp, "canary-ban").await;
    assert_eq!(edge.metric("edge_banned_addresses{listener=\"rtmp\"}").await, 1.0);
    assert_eq!(edge.metric("edge_bans_total{listener=\"rtmp\"}").await, 1.0);
    drop(held);
    // The ban runs out with nobody else connecting: the banned address's own SYNs
    // never reach accept, so the edge lifts it on a timer.
    eventually(Duration::from_secs(10), "the ban to run out", || async {
        connects_from(STRANGER, edge.rtmp, Duration::from_millis(300)).await.then_some(())
    })
    .await;
    let lasted = banned_at.elapsed();
    assert!(lasted >= Duration::from_millis(2500), "the 3 s ban ended after {lasted:?}");
    edge_logs(&edge, "address banned: too many refused connections").await;
}
