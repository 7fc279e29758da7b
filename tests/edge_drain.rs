//! Draining an edge (issue 17): SIGUSR1 (or `POST /drain`) turns its `/health` to 503
//! for the balancer; an RTMP player whose `connect` advertised Enhanced RTMP's reconnect
//! capability gets `NetConnection.Connect.ReconnectRequest` and keeps playing until it
//! goes, one that did not advertise it hears nothing and keeps playing; the player that
//! reconnects elsewhere plays there; the edge exits once its last client left. The
//! publisher on the other edge is not disturbed.

mod common;
#[path = "common/edges.rs"]
mod edges;

use std::time::Duration;

use common::{eventually, Cluster};
use edges::{ffmpeg_publish, EdgeProc};
use raftcast::bench::client::RtmpClient;
use raftcast::rtmp::session::{ClientConfig, ClientEvent, CAPS_EX_RECONNECT};

const RECONNECT: &str = "NetConnection.Connect.ReconnectRequest";

/// A player of `live/drain` on `edge`, advertising `caps_ex`.
async fn player(edge: &EdgeProc, caps_ex: u32) -> RtmpClient {
    eventually(Duration::from_secs(20), "a player to start", || async {
        let config = ClientConfig { caps_ex, ..ClientConfig::default() };
        let mut client = RtmpClient::connect_with(edge.rtmp, "live", None, config).await.ok()?;
        client.play("drain").await.ok()?;
        Some(client)
    })
    .await
}

/// What `client` hears within `limit`: video frames, and whether a reconnect request came.
async fn listen(client: &mut RtmpClient, limit: Duration) -> (usize, bool) {
    let (mut frames, mut asked) = (0, false);
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(event) = tokio::time::timeout_at(deadline, client.next_event()).await {
        match event.expect("the connection stays up") {
            Some(ClientEvent::Video { .. }) => frames += 1,
            Some(ClientEvent::Status { stream_id: 0, code, .. }) if code == RECONNECT => asked = true,
            Some(_) => {}
            None => panic!("the draining edge closed a player's connection"),
        }
    }
    (frames, asked)
}

async fn health(edge: &EdgeProc) -> u16 {
    reqwest::get(format!("http://{}/health", edge.http)).await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_fails_its_health_check_asks_players_to_reconnect_and_exits_when_empty() {
    let c = Cluster::start(3).await;
    let mut draining = EdgeProc::start(&c, "edge-1", &["--drain-deadline-ms", "30000"]).await;
    let other = EdgeProc::start(&c, "edge-2", &[]).await;
    let mut publisher = ffmpeg_publish(&other.rtmp_url("live", "drain"), c.dir.path().join("publisher.log"));
    let mut capable = player(&draining, CAPS_EX_RECONNECT).await;
    let mut plain = player(&draining, 0).await;
    assert_eq!(health(&draining).await, 200);
    let (frames, asked) = listen(&mut capable, Duration::from_secs(1)).await;
    assert!(frames > 0 && !asked, "playing, and nobody asked to reconnect yet");

    std::process::Command::new("kill").args(["-USR1", &draining.pid().to_string()]).status().unwrap();
    eventually(Duration::from_secs(2), "/health to answer 503", || async {
        (health(&draining).await == 503).then_some(())
    })
    .await;
    // New RTMP connections are refused (the listener closed): a balancer redispatches
    // them to another edge rather than landing them here to be asked to leave again.
    eventually(Duration::from_secs(2), "the RTMP listener to close", || async {
        tokio::net::TcpStream::connect(draining.rtmp).await.is_err().then_some(())
    })
    .await;
    let (frames, asked) = listen(&mut capable, Duration::from_secs(2)).await;
    assert!(asked, "the capable player was asked to reconnect");
    assert!(frames > 0, "and kept playing meanwhile");
    let (frames, asked) = listen(&mut plain, Duration::from_secs(1)).await;
    assert!(!asked && frames > 0, "the other player heard nothing and kept playing");
    assert_eq!(draining.metric("edge_reconnect_requests_total").await, 1.0);

    // The capable player goes where the balancer sends it now: the other edge.
    drop(capable);
    let mut moved = player(&other, CAPS_EX_RECONNECT).await;
    let (frames, asked) = listen(&mut moved, Duration::from_secs(1)).await;
    assert!(frames > 0 && !asked, "the reconnected player plays on the other edge");
    assert!(draining.wait_exit(Duration::from_secs(1)).await.is_none(), "a client is left: the edge stays");

    // The last client leaves: the edge stops on its own, cleanly.
    drop(plain);
    let status = draining.wait_exit(Duration::from_secs(10)).await.expect("the drained edge exits");
    assert!(status.success(), "{status}");
    assert_eq!(health(&other).await, 200);
    assert!(publisher.running(), "the publisher on the other edge was not disturbed");
}

/// `ctl edges drain EDGE --wait` drains the edge over HTTP, follows the clients left,
/// and returns once the edge has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_edges_drain_waits_until_the_edge_has_exited() {
    let c = Cluster::start(3).await;
    let mut draining = EdgeProc::start(&c, "edge-1", &["--drain-deadline-ms", "30000"]).await;
    let other = EdgeProc::start(&c, "edge-2", &[]).await;
    let mut publisher = ffmpeg_publish(&other.rtmp_url("live", "drain"), c.dir.path().join("publisher.log"));
    let mut plain = player(&draining, 0).await;
    let ctl = tokio::process::Command::new(common::BIN)
        .args(["ctl", "edges", "drain", &draining.http.to_string(), "--wait", "--wait-secs", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(5), "/health to answer 503", || async {
        (health(&draining).await == 503).then_some(())
    })
    .await;
    // A client is left: the edge, and ctl, wait.
    let (frames, _) = listen(&mut plain, Duration::from_secs(2)).await;
    assert!(frames > 0, "the player keeps playing while the edge drains");
    assert!(draining.wait_exit(Duration::from_millis(100)).await.is_none(), "a client is left: the edge stays");

    drop(plain);
    let out =
        tokio::time::timeout(Duration::from_secs(15), ctl.wait_with_output()).await.expect("ctl returns").unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctl: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("draining: 1 RTMP connection(s)"), "ctl reported the player left: {text}");
    assert!(text.contains("has exited"), "{text}");
    let status = draining.wait_exit(Duration::from_secs(5)).await.expect("the drained edge has exited");
    assert!(status.success(), "{status}");
    assert!(publisher.running(), "the publisher on the other edge was not disturbed");
}

/// The line the edge's HAProxy agent answers on `addr`.
async fn agent_line(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncReadExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(2), socket.read_to_string(&mut line)).await.unwrap().unwrap();
    line
}

/// The weight in a `ready W%` answer.
fn agent_weight(line: &str) -> Option<u32> {
    line.strip_prefix("ready ")?.strip_suffix("%\n")?.parse().ok()
}

/// HAProxy's agent on an edge (issue 17): full weight when idle, less as its egress
/// grows towards `--agent-egress-mbps`, and `drain` once it drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_lowers_the_weight_with_egress_and_says_drain_while_draining() {
    let c = Cluster::start(3).await;
    let agent = common::free_addr();
    let edge = EdgeProc::start(
        &c,
        "edge-1",
        &["--agent", &agent.to_string(), "--agent-egress-mbps", "1", "--drain-deadline-ms", "30000"],
    )
    .await;
    let line = agent_line(agent).await;
    assert!(agent_weight(&line).is_some_and(|w| w >= 90), "an idle edge answers (nearly) full weight: {line:?}");

    // Four players of a stream of some hundreds of kbit/s: more than 1 Mbit/s out.
    let mut publisher = ffmpeg_publish(&edge.rtmp_url("live", "drain"), c.dir.path().join("publisher.log"));
    let mut players = Vec::new();
    for _ in 0..4 {
        players.push(player(&edge, 0).await);
    }
    let readers: Vec<_> = players
        .into_iter()
        .map(|mut p| tokio::spawn(async move { listen(&mut p, Duration::from_secs(8)).await }))
        .collect();
    let low = eventually(Duration::from_secs(8), "the weight to fall below 50 %", || async {
        agent_weight(&agent_line(agent).await).filter(|w| *w < 50)
    })
    .await;
    let egress = edge.metric("edge_load_egress_bytes_per_second").await;
    assert!(egress > 125_000.0, "the egress behind the weight ({low} %) is over 1 Mbit/s: {egress} B/s");
    assert!(edge.metric("edge_agent_weight_percent").await <= 50.0, "/metrics shows the same weight");

    let drain = reqwest::Client::new().post(format!("http://{}/drain", edge.http)).send().await.unwrap();
    assert!(drain.status().is_success());
    assert_eq!(agent_line(agent).await, "drain\n");
    for r in readers {
        let (frames, _) = r.await.unwrap();
        assert!(frames > 0);
    }
    assert!(publisher.running());
}
