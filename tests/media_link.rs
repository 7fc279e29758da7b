//! The origin's media link with real origin processes and a fake edge speaking the link
//! protocol: claim through the leader, publish under the claim's epoch, subscribe from
//! another link and receive the GOP then live frames; wrong secrets, stale epochs and
//! non-owners are refused.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::Cluster;
use raftcast::link::{
    ChannelId, Control, FrameCodec, LinkFrame, MediaFrame, PublishRefusal, OLDEST_PROTOCOL, PROTOCOL_VERSION,
};
use raftcast::media::Frame;
use raftcast_raft::command::StreamClaim;
use raftcast_raft::{Forward, ForwardReply, RequestId, Response, StreamKey};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Claims `stream` the way an edge does: `/raft/forward` on any origin, following the
/// leader.
/// Commits a takeover claim of `stream` for `edge` on `owner` as a raw command, past
/// the leader's claim policy (which grants takeovers only of dead sessions): what the
/// link server must do when a newer epoch appears is the subject here.
async fn force_takeover(c: &Cluster, stream: &StreamKey, edge: &str, owner: u64) -> Response {
    let command = raftcast_raft::Command::ClaimStream {
        stream: stream.clone(),
        owner,
        edge: edge.into(),
        session: format!("{edge}-session"),
        takeover: true,
    };
    let req = Forward::Write(raftcast_raft::Request { id: RequestId::random(), at_ms: 0, command });
    match forward(c, &req).await {
        ForwardReply::Written(resp) => resp,
        other => panic!("unexpected {other:?}"),
    }
}

async fn claim(c: &Cluster, stream: &StreamKey, edge: &str, takeover: bool) -> Response {
    claim_with_key(c, stream, edge, takeover, None).await
}

async fn claim_with_key(c: &Cluster, stream: &StreamKey, edge: &str, takeover: bool, key: Option<&str>) -> Response {
    let req = Forward::Claim {
        id: RequestId::random(),
        stream: stream.clone(),
        edge: edge.into(),
        session: format!("{edge}-session"),
        takeover,
        key: key.map(String::from),
    };
    match forward(c, &req).await {
        ForwardReply::Written(resp) => resp,
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends an internal request the way an edge does: `/raft/forward` on any origin,
/// following the leader until one answers.
async fn forward(c: &Cluster, req: &Forward) -> ForwardReply {
    for _ in 0..100 {
        for id in c.origins.keys() {
            let res = c
                .client
                .post(format!("http://{}/raft/forward", c.http(*id)))
                .header("x-raftcast-cluster-secret", &c.secret)
                .body(raftcast_raft::rpc::encode(req))
                .send()
                .await;
            let Ok(res) = res else { continue };
            let body = res.bytes().await.unwrap();
            match raftcast_raft::rpc::decode::<ForwardReply>(&body) {
                Ok(ForwardReply::NotLeader { .. }) | Err(_) => {}
                Ok(reply) => return reply,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no origin answered {req:?}");
}

struct FakeEdge {
    socket: TcpStream,
    buf: BytesMut,
}

impl FakeEdge {
    async fn connect(addr: std::net::SocketAddr, secret: &str) -> (FakeEdge, Control) {
        Self::connect_as(addr, secret, "edge-t").await
    }

    async fn connect_as(addr: std::net::SocketAddr, secret: &str, name: &str) -> (FakeEdge, Control) {
        Self::connect_speaking(addr, secret, name, PROTOCOL_VERSION).await
    }

    async fn connect_speaking(
        addr: std::net::SocketAddr,
        secret: &str,
        name: &str,
        protocol: u32,
    ) -> (FakeEdge, Control) {
        let socket = TcpStream::connect(addr).await.unwrap();
        let mut edge = FakeEdge { socket, buf: BytesMut::new() };
        edge.send(LinkFrame::Control(Control::Hello { protocol, edge: name.into(), secret: secret.into() })).await;
        let answer = edge.control().await;
        (edge, answer)
    }

    async fn send(&mut self, frame: LinkFrame) {
        let mut out = BytesMut::new();
        FrameCodec::encode(&frame, &mut out);
        self.socket.write_all(&out).await.unwrap();
    }

    async fn next(&mut self) -> Option<LinkFrame> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(f) = FrameCodec::decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                if self.socket.read_buf(&mut self.buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("a frame within 5 s")
    }

    /// The next control frame (skipping media and pongs), pinging every 500 ms
    /// meanwhile so the origin keeps the link; at most 10 s.
    async fn control_keepalive(&mut self) -> Control {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(std::time::Instant::now() < deadline, "no control frame within 10 s");
            match tokio::time::timeout(Duration::from_millis(500), self.next()).await {
                Ok(Some(LinkFrame::Control(Control::Pong { .. }) | LinkFrame::Media(_))) => {}
                Ok(Some(LinkFrame::Control(c))) => return c,
                Ok(None) => panic!("link closed"),
                Err(_) => self.send(LinkFrame::Control(Control::Ping { seq: 0 })).await,
            }
        }
    }

    /// The next control frame, skipping media and pongs.
    async fn control(&mut self) -> Control {
        loop {
            match self.next().await.expect("link open") {
                LinkFrame::Control(Control::Pong { .. }) | LinkFrame::Media(_) => {}
                LinkFrame::Control(c) => return c,
            }
        }
    }
}

fn video(ts: u32, key: bool) -> Frame {
    Frame::video(ts, Bytes::from(vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0, ts as u8]))
}

/// The `/streams` entry of `name`, as origin `via` lists it.
async fn listed(c: &Cluster, via: u64, name: &str) -> serde_json::Value {
    let (s, body) = c.call(via, Method::GET, "/streams", None, &[]).await.unwrap();
    assert!(s.is_success(), "{body}");
    body["streams"].as_array().unwrap().iter().find(|s| s["name"] == name).cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_streams_through_its_owner_to_a_subscribed_edge() {
    let mut c = Cluster::start(3).await;
    let stream = StreamKey::new("live", "foo").unwrap();
    let Response::Claimed(StreamClaim { owner, epoch, .. }) = claim(&c, &stream, "edge-1", false).await else {
        panic!("claim refused")
    };
    let owner_media = c.origins[&owner].media;

    // A second claim by another session is refused (one owner per stream).
    assert!(matches!(claim(&c, &stream, "edge-2", false).await, Response::Rejected(_)));

    // Before anyone publishes, the owner reports the claim as not publishing.
    let other = (1..=3).find(|id| *id != owner).unwrap();
    let entry = listed(&c, other, "foo").await;
    assert_eq!(
        (&entry["publishing"], &entry["subscribers"], &entry["bytes_in"]),
        (&false.into(), &serde_json::json!([]), &0.into()),
        "{entry}"
    );

    let (mut publisher, welcome) = FakeEdge::connect_as(owner_media, &c.secret, "edge-1").await;
    assert_eq!(welcome, Control::Welcome { protocol: PROTOCOL_VERSION, origin: owner });
    publisher.send(LinkFrame::Control(Control::Publish { channel: ChannelId(1), stream: stream.clone(), epoch })).await;
    assert_eq!(publisher.control().await, Control::PublishAccepted { channel: ChannelId(1) });
    let media = |frame: Frame| LinkFrame::Media(MediaFrame { channel: ChannelId(1), frame });
    let mut sent = vec![
        Frame::metadata(0, Bytes::from_static(b"\x02\x00\x0aonMetaData")),
        Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])),
        video(0, true),
        video(33, false),
    ];
    for frame in &sent {
        publisher.send(media(frame.clone())).await;
    }

    // Another edge subscribes: the GOP cache first, then live frames.
    let (mut player, _) = FakeEdge::connect_as(owner_media, &c.secret, "edge-2").await;
    player.send(LinkFrame::Control(Control::Subscribe { channel: ChannelId(7), stream: stream.clone() })).await;
    assert_eq!(player.control().await, Control::Subscribed { channel: ChannelId(7) });
    sent.push(video(66, false));
    publisher.send(media(video(66, false))).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        if let Some(LinkFrame::Media(MediaFrame { channel, frame })) = player.next().await {
            assert_eq!(channel, ChannelId(7));
            got.push((frame.timestamp, frame.keyframe, frame.header));
        }
    }
    assert_eq!(got, vec![(0, false, true), (0, false, true), (0, true, false), (33, false, false), (66, false, false)]);

    // Every origin lists the stream with its owner, epoch and the owner's live facts.
    let bytes: usize = sent.iter().map(|f| f.payload.len()).sum();
    for via in [owner, other] {
        let entry = listed(&c, via, "foo").await;
        assert_eq!(entry["owner"], owner, "{entry}");
        assert_eq!(entry["epoch"], epoch);
        assert_eq!(entry["edge"], "edge-1");
        assert_eq!(entry["publishing"], true, "via {via}: {entry}");
        assert_eq!(entry["subscribers"], serde_json::json!(["edge-2"]), "via {via}: {entry}");
        assert_eq!(entry["bytes_in"], bytes, "via {via}: {entry}");
        assert_eq!(entry["frames_in"], sent.len(), "via {via}: {entry}");
        assert!(entry["bitrate_kbps"].as_f64().unwrap() > 0.0, "via {via}: {entry}");
    }
    // And the owner's metrics count the link traffic and its stream.
    let (_, text) = c.call(owner, Method::GET, "/metrics", None, &[]).await.unwrap();
    let text = text.as_str().unwrap();
    assert!(text.contains("raftcast_link_connections 2"), "{text}");
    assert!(text.contains(&format!("raftcast_streams_owned{{origin=\"{owner}\"}} 1")), "{text}");
    assert!(text.contains("raftcast_link_publishers 1") && text.contains("raftcast_link_subscriptions 1"));
    let bytes_in = text.lines().find_map(|l| l.strip_prefix("raftcast_link_bytes_in_total ")).unwrap();
    assert!(bytes_in.parse::<u64>().unwrap() > bytes as u64, "{bytes_in}");

    // The publisher leaves: the subscriber hears the end, and the claim (not released
    // by this fake edge) shows no publisher and no subscriber.
    publisher.send(LinkFrame::Control(Control::Unpublish { channel: ChannelId(1) })).await;
    assert_eq!(player.control().await, Control::Ended { channel: ChannelId(7) });
    let entry = listed(&c, other, "foo").await;
    assert_eq!((&entry["publishing"], &entry["subscribers"]), (&false.into(), &serde_json::json!([])), "{entry}");

    // An owner that does not answer costs only the live fields of its streams.
    c.kill(owner);
    let started = std::time::Instant::now();
    let entry = listed(&c, other, "foo").await;
    assert_eq!(entry["owner"], owner, "{entry}");
    for field in ["publishing", "subscribers", "bitrate_kbps", "bytes_in", "frames_in"] {
        assert!(entry[field].is_null(), "{field} of a dead owner: {entry}");
    }
    eprintln!("/streams with a dead owner answered in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_with_a_wrong_secret_stale_epochs_and_non_owners_are_refused() {
    let c = Cluster::start(3).await;
    let (mut edge, answer) = FakeEdge::connect(c.origins[&1].media, "not-the-secret-at-all").await;
    assert!(matches!(answer, Control::Refused { .. }), "{answer:?}");
    assert_eq!(edge.next().await, None, "the origin closes a refused link");
    // Versions: the oldest one still spoken is welcomed in its own version (an edge
    // not upgraded yet), one older or one newer than this origin is refused.
    let media = c.origins[&1].media;
    let (_old, answer) = FakeEdge::connect_speaking(media, &c.secret, "edge-old", OLDEST_PROTOCOL).await;
    assert_eq!(answer, Control::Welcome { protocol: OLDEST_PROTOCOL, origin: 1 });
    for protocol in [OLDEST_PROTOCOL - 1, PROTOCOL_VERSION + 1] {
        let (mut edge, answer) = FakeEdge::connect_speaking(media, &c.secret, "edge-x", protocol).await;
        assert!(matches!(&answer, Control::Refused { reason } if reason.contains("protocol")), "{answer:?}");
        assert_eq!(edge.next().await, None, "the origin closes a refused link");
    }

    let stream = StreamKey::new("live", "bar").unwrap();
    let Response::Claimed(first) = claim(&c, &stream, "edge-1", false).await else { panic!() };
    // A takeover (a reconnecting publisher) gets a new epoch, which fences the first.
    let Response::Claimed(second) = force_takeover(&c, &stream, "edge-2", first.owner).await else { panic!() };
    assert!(second.epoch > first.epoch);
    let (mut edge, _) = FakeEdge::connect(c.origins[&second.owner].media, &c.secret).await;
    edge.send(LinkFrame::Control(Control::Publish {
        channel: ChannelId(1),
        stream: stream.clone(),
        epoch: first.epoch,
    }))
    .await;
    let refused = edge.control().await;
    assert!(
        matches!(refused, Control::PublishRefused { reason: PublishRefusal::StaleEpoch { .. }, .. }),
        "{refused:?}"
    );

    // An origin that does not own the stream refuses its media and has nothing to play.
    let other = (1..=3).find(|id| *id != second.owner).unwrap();
    let (mut edge, _) = FakeEdge::connect(c.origins[&other].media, &c.secret).await;
    edge.send(LinkFrame::Control(Control::Publish {
        channel: ChannelId(2),
        stream: stream.clone(),
        epoch: second.epoch,
    }))
    .await;
    let refused = edge.control().await;
    let expected = PublishRefusal::NotOwner { owner: second.owner };
    assert!(matches!(refused, Control::PublishRefused { reason, .. } if reason == expected), "{refused:?}");
    edge.send(LinkFrame::Control(Control::Subscribe { channel: ChannelId(3), stream })).await;
    assert_eq!(edge.control().await, Control::NotFound { channel: ChannelId(3) });

    // Garbage closes only that link; the origin keeps serving.
    let mut raw = TcpStream::connect(c.origins[&1].media).await.unwrap();
    raw.write_all(&[0xff; 64]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await.unwrap();
    let (_, welcome) = FakeEdge::connect(c.origins[&1].media, &c.secret).await;
    assert!(matches!(welcome, Control::Welcome { .. }));
}

fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

/// Waits for the next Up or Down event, skipping frames.
async fn next_transition(
    events: &mut tokio::sync::mpsc::Receiver<raftcast::link::LinkEvent>,
    timeout: Duration,
) -> raftcast::link::LinkEvent {
    use raftcast::link::LinkEvent;
    tokio::time::timeout(timeout, async {
        loop {
            match events.recv().await.expect("link task running") {
                LinkEvent::Frame(_) => {}
                e => return e,
            }
        }
    })
    .await
    .expect("a link transition in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_link_notices_dead_and_paused_origins_and_reconnects() {
    use raftcast::link::client::{spawn, LinkTiming};
    use raftcast::link::LinkEvent;
    let mut c = Cluster::start(3).await;
    let target = 2;
    let (tx, mut events) = tokio::sync::mpsc::channel(64);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let secret = raftcast_raft::rpc::ClusterSecret::new(&c.secret).unwrap();
    let link =
        spawn(c.origins[&target].media, "edge-t".into(), secret, None, LinkTiming::default(), tx, shutdown.clone());
    assert_eq!(next_transition(&mut events, Duration::from_secs(5)).await, LinkEvent::Up { origin: target });
    assert!(link.send(LinkFrame::Control(Control::Ping { seq: 1 })).is_ok());

    // Killed: the closed socket is noticed at once.
    let killed_at = std::time::Instant::now();
    c.kill(target);
    assert!(matches!(next_transition(&mut events, Duration::from_secs(5)).await, LinkEvent::Down { .. }));
    let noticed = killed_at.elapsed();
    assert!(link.send(LinkFrame::Control(Control::Ping { seq: 2 })).is_err(), "no sends while down");
    c.spawn(target);
    assert_eq!(next_transition(&mut events, Duration::from_secs(10)).await, LinkEvent::Up { origin: target });

    // Paused: nothing closes, the silence is noticed within `dead_after` (500 ms) plus
    // scheduling slack.
    let pid = c.origins[&target].child.as_ref().unwrap().id();
    signal(pid, "-STOP");
    let paused_at = std::time::Instant::now();
    let down = next_transition(&mut events, Duration::from_secs(5)).await;
    let silent_for = paused_at.elapsed();
    signal(pid, "-CONT");
    assert!(matches!(down, LinkEvent::Down { ref reason } if reason.contains("silent")), "{down:?}");
    assert!(silent_for < Duration::from_millis(1500), "noticed after {silent_for:?}");
    assert_eq!(next_transition(&mut events, Duration::from_secs(10)).await, LinkEvent::Up { origin: target });
    eprintln!("kill noticed after {noticed:?}; pause noticed after {silent_for:?}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_check_publish_keys_and_lookups_find_the_owner() {
    use raftcast_raft::Rejection;
    let c = Cluster::start(3).await;
    let stream = StreamKey::new("secure", "cam").unwrap();
    let (s, _) = c
        .call(1, Method::PUT, "/apps/secure", Some(&serde_json::json!({"publish_key_required": true})), &[])
        .await
        .unwrap();
    assert!(s.is_success());
    let (s, key) = c
        .call(2, Method::POST, "/keys", Some(&serde_json::json!({"app": "secure", "name": "cam"})), &[])
        .await
        .unwrap();
    assert!(s.is_success(), "{key}");
    let key = key["key"].as_str().unwrap().to_owned();

    assert_eq!(claim(&c, &stream, "edge-1", false).await, Response::Rejected(Rejection::PublishDenied));
    assert_eq!(
        claim_with_key(&c, &stream, "edge-1", false, Some("guess")).await,
        Response::Rejected(Rejection::PublishDenied)
    );
    let Response::Claimed(claimed) = claim_with_key(&c, &stream, "edge-1", false, Some(&key)).await else {
        panic!("a valid key is refused")
    };
    // An open app needs no key.
    assert!(matches!(claim(&c, &StreamKey::new("live", "open").unwrap(), "edge-1", false).await, Response::Claimed(_)));

    // Any origin answers who owns the stream and where its media link is.
    for id in 1..=3u64 {
        let reply = forward(&c, &Forward::Lookup { stream: stream.clone() }).await;
        let ForwardReply::Owner { claim: Some(found), media: Some(media) } = reply else {
            panic!("node {id}: {reply:?}")
        };
        assert_eq!(found, claimed);
        assert_eq!(media, c.origins[&claimed.owner].media.to_string());
    }
    let missing = forward(&c, &Forward::Lookup { stream: StreamKey::new("live", "nobody").unwrap() }).await;
    assert_eq!(missing, ForwardReply::Owner { claim: None, media: None });
}

/// Counts the listed streams per owner.
async fn owners(c: &Cluster) -> std::collections::BTreeMap<u64, usize> {
    let (s, body) = c.call(1, Method::GET, "/streams", None, &[]).await.unwrap();
    assert!(s.is_success(), "{body}");
    let mut owners = std::collections::BTreeMap::new();
    for stream in body["streams"].as_array().unwrap() {
        *owners.entry(stream["owner"].as_u64().unwrap()).or_default() += 1;
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_streams_go_to_their_origin_and_spread_by_load_once_unpinned() {
    use serde_json::json;
    // These claims never get a publisher: keep them for the whole test.
    let mut c = Cluster::start_with(3, &["--orphan-grace", "1h"]).await;
    let claimed_owner = |resp: Response| match resp {
        Response::Claimed(claim) => claim.owner,
        other => panic!("claim refused: {other:?}"),
    };

    // Only members can be pinned to.
    let (s, body) = c.call(1, Method::PUT, "/pins/live/pinned-*", Some(&json!({"origin": 9})), &[]).await.unwrap();
    assert_eq!(s, reqwest::StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "unknown_origin");
    assert!(body["error"]["message"].as_str().unwrap().contains("origin 9 is not a member"), "{body}");

    // Any origin takes the rules (writes go to the leader); the exact name beats the glob.
    let (s, body) = c.call(2, Method::PUT, "/pins/live/pinned-%2A", Some(&json!({"origin": 3})), &[]).await.unwrap();
    assert!(s.is_success(), "{body}");
    assert_eq!(body, json!({"app": "live", "pattern": "pinned-*", "origin": 3}));
    let (s, _) = c.call(3, Method::PUT, "/pins/live/pinned-b", Some(&json!({"origin": 2})), &[]).await.unwrap();
    assert!(s.is_success());
    let (_, pins) = c.call(1, Method::GET, "/pins", None, &[]).await.unwrap();
    assert_eq!(
        pins,
        json!({"pins": [
            {"app": "live", "pattern": "pinned-*", "origin": 3},
            {"app": "live", "pattern": "pinned-b", "origin": 2},
        ]})
    );
    let key = |name: &str| StreamKey::new("live", name).unwrap();
    assert_eq!(claimed_owner(claim(&c, &key("pinned-a"), "edge-1", false).await), 3);
    assert_eq!(claimed_owner(claim(&c, &key("pinned-b"), "edge-1", false).await), 2);

    // Without the rules, new streams spread by load: a pin still in force would put all
    // five on origin 3 (six streams there).
    let (s, _) = c.call(1, Method::DELETE, "/pins/live/pinned-*", None, &[]).await.unwrap();
    assert!(s.is_success());
    let (s, _) = c.call(1, Method::DELETE, "/pins/live/pinned-*", None, &[]).await.unwrap();
    assert_eq!(s, reqwest::StatusCode::NOT_FOUND, "a second delete finds nothing");
    let (s, _) = c.call(2, Method::DELETE, "/pins/live/pinned-b", None, &[]).await.unwrap();
    assert!(s.is_success());
    for name in ["pinned-c", "pinned-d", "pinned-e", "pinned-f", "pinned-g"] {
        claim(&c, &key(name), "edge-1", false).await;
    }
    let load = owners(&c).await;
    assert_eq!(load.values().sum::<usize>(), 7);
    let (min, max) = (load.values().min().unwrap(), load.values().max().unwrap());
    assert!(load.len() == 3 && max - min <= 1, "not spread by load: {load:?}");

    // A pinned origin that is not live is skipped (and the leader says so).
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let (s, _) =
        c.call(leader, Method::PUT, "/pins/live/fallback-%2A", Some(&json!({"origin": follower})), &[]).await.unwrap();
    assert!(s.is_success());
    c.kill(follower);
    // The leader calls a follower live until it is more than 64 entries behind.
    for i in 0..80 {
        let (s, body) = c.put_slot(leader, "lag", "n", &json!(i), None).await.unwrap();
        assert!(s.is_success(), "{body}");
    }
    let owner = claimed_owner(claim(&c, &key("fallback-a"), "edge-1", false).await);
    assert_ne!(owner, follower, "placed on the pinned origin although it is down");
    let log = std::fs::read_to_string(c.log_path(leader)).unwrap();
    assert!(log.contains("the pinned origin is not a live voter"), "the fallback is not logged");
}

/// The names of the streams origin 1 lists.
async fn listed_names(c: &Cluster) -> Vec<String> {
    let (s, body) = c.call(1, Method::GET, "/streams", None, &[]).await.unwrap();
    assert!(s.is_success(), "{body}");
    body["streams"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect()
}

async fn put_pin(c: &Cluster, name: &str, origin: u64) {
    let body = serde_json::json!({ "origin": origin });
    let (s, body) = c.call(1, Method::PUT, &format!("/pins/live/{name}"), Some(&body), &[]).await.unwrap();
    assert!(s.is_success(), "{body}");
}

/// Media frames received on `channel` until `n` have arrived: (timestamp, keyframe, header).
async fn receive(edge: &mut FakeEdge, channel: ChannelId, n: usize) -> Vec<(u32, bool, bool)> {
    let mut got = Vec::new();
    while got.len() < n {
        match edge.next().await.expect("link open") {
            LinkFrame::Media(MediaFrame { channel: c, frame }) if c == channel => {
                got.push((frame.timestamp, frame.keyframe, frame.header))
            }
            LinkFrame::Control(Control::Ended { .. }) => panic!("ended after {got:?}"),
            _ => {}
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waiting_for_its_claim_holds_media_and_never_stalls_the_link() {
    let c = Cluster::start(3).await;
    // Pin the stream so we know its owner before it is claimed.
    put_pin(&c, "held-a", 2).await;
    let leader = c.wait_leader(None, Duration::from_secs(10)).await;
    let last = c.status(leader).await.unwrap()["last_log_index"].as_u64().unwrap();
    common::eventually(Duration::from_secs(10), "origin 2 to apply everything", || async {
        (c.status(2).await?["applied_index"].as_u64()? >= last).then_some(())
    })
    .await;

    // The edge publishes under the epoch the claim will get (the next log entry of this
    // quiet cluster), before the claim exists, and sends media right away, as an edge
    // whose link came back does.
    let stream = StreamKey::new("live", "held-a").unwrap();
    let (mut edge, _) = FakeEdge::connect_as(c.origins[&2].media, &c.secret, "edge-1").await;
    edge.send(LinkFrame::Control(Control::Publish { channel: ChannelId(1), stream: stream.clone(), epoch: last + 1 }))
        .await;
    // A second publish whose claim never comes.
    let never = StreamKey::new("live", "never").unwrap();
    edge.send(LinkFrame::Control(Control::Publish { channel: ChannelId(3), stream: never, epoch: last + 10_000 }))
        .await;
    let media = |frame: Frame| LinkFrame::Media(MediaFrame { channel: ChannelId(1), frame });
    edge.send(media(Frame::metadata(0, Bytes::from_static(b"\x02\x00\x0aonMetaData")))).await;
    edge.send(media(Frame::video(0, Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1])))).await;
    edge.send(media(video(0, true))).await;
    edge.send(media(video(33, false))).await;

    // Both publishes wait for claims (2 s at most), yet the link answers at once.
    let asked = std::time::Instant::now();
    edge.send(LinkFrame::Control(Control::Ping { seq: 42 })).await;
    let first = edge.next().await.expect("link open");
    assert_eq!(first, LinkFrame::Control(Control::Pong { seq: 42 }), "the first answer is the pong");
    let answered = asked.elapsed();
    assert!(answered < Duration::from_millis(500), "the link stalled for {answered:?}");

    let Response::Claimed(claimed) = claim(&c, &stream, "edge-1", false).await else { panic!("claim refused") };
    assert_eq!((claimed.owner, claimed.epoch), (2, last + 1), "the cluster was not quiet: the claim is elsewhere");
    assert_eq!(edge.control_keepalive().await, Control::PublishAccepted { channel: ChannelId(1) });

    // What the edge sent while the publish waited is in the hub, in order.
    let (mut player, _) = FakeEdge::connect_as(c.origins[&2].media, &c.secret, "edge-2").await;
    player.send(LinkFrame::Control(Control::Subscribe { channel: ChannelId(7), stream })).await;
    assert_eq!(player.control().await, Control::Subscribed { channel: ChannelId(7) });
    assert_eq!(
        receive(&mut player, ChannelId(7), 4).await,
        vec![(0, false, true), (0, false, true), (0, true, false), (33, false, false)]
    );

    // The publish whose claim never came is refused once its wait is over.
    let refused = edge.control_keepalive().await;
    assert!(matches!(refused, Control::PublishRefused { channel: ChannelId(3), .. }), "{refused:?}");
    let (_, text) = c.call(2, Method::GET, "/metrics", None, &[]).await.unwrap();
    assert!(text.as_str().unwrap().contains("raftcast_link_pending_dropped_frames_total 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_of_a_superseded_or_moved_claim_are_fenced() {
    let c = Cluster::start(3).await;
    put_pin(&c, "fence-a", 2).await;
    let stream = StreamKey::new("live", "fence-a").unwrap();
    let owner_media = c.origins[&2].media;
    let Response::Claimed(first) = claim(&c, &stream, "edge-1", false).await else { panic!() };
    assert_eq!(first.owner, 2);
    let (mut a, _) = FakeEdge::connect_as(owner_media, &c.secret, "edge-1").await;
    a.send(LinkFrame::Control(Control::Publish { channel: ChannelId(1), stream: stream.clone(), epoch: first.epoch }))
        .await;
    assert_eq!(a.control().await, Control::PublishAccepted { channel: ChannelId(1) });
    a.send(LinkFrame::Media(MediaFrame { channel: ChannelId(1), frame: video(0, true) })).await;
    let (mut player, _) = FakeEdge::connect_as(owner_media, &c.secret, "edge-3").await;
    player.send(LinkFrame::Control(Control::Subscribe { channel: ChannelId(9), stream: stream.clone() })).await;
    assert_eq!(player.control().await, Control::Subscribed { channel: ChannelId(9) });
    assert_eq!(receive(&mut player, ChannelId(9), 1).await, vec![(0, true, false)]);

    // A reconnecting publisher takes the stream over on another link of the same owner:
    // the first publisher is told at its next frame, which goes nowhere.
    let Response::Claimed(second) = force_takeover(&c, &stream, "edge-2", 2).await else { panic!() };
    assert_eq!(second.owner, 2);
    let (mut b, _) = FakeEdge::connect_as(owner_media, &c.secret, "edge-2").await;
    b.send(LinkFrame::Control(Control::Publish { channel: ChannelId(4), stream: stream.clone(), epoch: second.epoch }))
        .await;
    assert_eq!(b.control().await, Control::PublishAccepted { channel: ChannelId(4) });
    a.send(LinkFrame::Media(MediaFrame { channel: ChannelId(1), frame: video(1000, true) })).await;
    let fenced = a.control().await;
    assert!(
        matches!(&fenced, Control::PublishRefused { channel: ChannelId(1), reason: PublishRefusal::Fenced }),
        "{fenced:?}"
    );
    b.send(LinkFrame::Media(MediaFrame { channel: ChannelId(4), frame: video(5000, true) })).await;
    b.send(LinkFrame::Media(MediaFrame { channel: ChannelId(4), frame: video(5033, false) })).await;
    assert_eq!(receive(&mut player, ChannelId(9), 2).await, vec![(5000, true, false), (5033, false, false)]);

    // The claim moves to another origin: the stream ends here, and the publisher still
    // sending here is told.
    let Response::Claimed(third) = force_takeover(&c, &stream, "edge-4", 3).await else { panic!() };
    assert_eq!(third.owner, 3);
    assert_eq!(player.control().await, Control::Ended { channel: ChannelId(9) });
    b.send(LinkFrame::Media(MediaFrame { channel: ChannelId(4), frame: video(5066, false) })).await;
    let fenced = b.control().await;
    assert!(
        matches!(fenced, Control::PublishRefused { channel: ChannelId(4), reason: PublishRefusal::Fenced }),
        "{fenced:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphaned_claims_are_released_after_the_grace_while_published_streams_stay() {
    const GRACE: Duration = Duration::from_secs(2);
    let c = Cluster::start_with(3, &["--orphan-grace", "2s"]).await;

    // A claim nobody publishes (its edge died right after claiming) ...
    let orphan = StreamKey::new("live", "orphan").unwrap();
    let Response::Claimed(orphaned) = claim(&c, &orphan, "edge-dead", false).await else { panic!() };
    let claimed_at = std::time::Instant::now();
    // ... and one with a live publisher.
    let kept = StreamKey::new("live", "kept").unwrap();
    let Response::Claimed(live) = claim(&c, &kept, "edge-1", false).await else { panic!() };
    let (mut edge, _) = FakeEdge::connect_as(c.origins[&live.owner].media, &c.secret, "edge-1").await;
    edge.send(LinkFrame::Control(Control::Publish { channel: ChannelId(1), stream: kept.clone(), epoch: live.epoch }))
        .await;
    assert_eq!(edge.control().await, Control::PublishAccepted { channel: ChannelId(1) });

    // Keep publishing (which also keeps the link alive) while watching the list.
    let mut ts = 0;
    let mut next_frame = || {
        ts += 200;
        LinkFrame::Media(MediaFrame { channel: ChannelId(1), frame: video(ts, ts % 2000 == 0) })
    };
    let released_after = loop {
        let names = listed_names(&c).await;
        assert!(names.contains(&"kept".to_owned()), "the published stream was released: {names:?}");
        if !names.contains(&"orphan".to_owned()) {
            break claimed_at.elapsed();
        }
        assert!(claimed_at.elapsed() < GRACE + Duration::from_secs(10), "the orphaned claim is never released");
        edge.send(next_frame()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(released_after >= GRACE, "released after {released_after:?}, before the grace of {GRACE:?}");
    eprintln!("orphaned claim released {released_after:?} after it was made");
    let (_, text) = c.call(orphaned.owner, Method::GET, "/metrics", None, &[]).await.unwrap();
    assert!(text.as_str().unwrap().contains("raftcast_orphans_released_total 1"), "{text}");

    // The published stream stays for well over the grace period.
    let watch_until = std::time::Instant::now() + 2 * GRACE;
    while std::time::Instant::now() < watch_until {
        let entry = listed(&c, 1, "kept").await;
        assert_eq!(entry["publishing"], true, "{entry}");
        edge.send(next_frame()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Its publisher leaves without releasing the claim (the edge's release failed):
    // the claim goes too, a grace period later.
    edge.send(LinkFrame::Control(Control::Unpublish { channel: ChannelId(1) })).await;
    let left_at = std::time::Instant::now();
    let gone_after = loop {
        if !listed_names(&c).await.contains(&"kept".to_owned()) {
            break left_at.elapsed();
        }
        assert!(left_at.elapsed() < GRACE + Duration::from_secs(10), "the abandoned claim is never released");
        edge.send(LinkFrame::Control(Control::Ping { seq: 1 })).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(gone_after >= GRACE, "released {gone_after:?} after the publisher left, before the grace");
}

/// The next `Claims` of feed `channel` that names streams, checking that every
/// message of the feed (heartbeats included) follows the last without a gap.
async fn next_claims(
    edge: &mut FakeEdge,
    channel: ChannelId,
    next_seq: &mut u64,
) -> Vec<(StreamKey, Option<raftcast::link::protocol::FeedClaim>)> {
    loop {
        match edge.control_keepalive().await {
            Control::Claims { channel: got, seq, claims, .. } => {
                assert_eq!(got, channel);
                assert_eq!(seq, *next_seq, "the feed's messages are numbered without a gap");
                *next_seq += 1;
                if !claims.is_empty() {
                    return claims;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn origin_metric(c: &Cluster, id: u64, series: &str) -> f64 {
    let (_, body) = c.call(id, Method::GET, "/metrics", None, &[]).await.unwrap();
    let text = body.as_str().map(str::to_owned).unwrap_or_else(|| body.to_string());
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).expect(series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_feed_answers_added_streams_then_every_change_and_stops_when_unwatched() {
    let c = Cluster::start(3).await;
    let fed = StreamKey::new("live", "fed").unwrap();
    let other = StreamKey::new("live", "other").unwrap();
    let (mut edge, welcome) = FakeEdge::connect(c.origins[&1].media, &c.secret).await;
    assert!(matches!(welcome, Control::Welcome { .. }), "{welcome:?}");
    let feed = ChannelId(7);
    let mut seq = 0;
    let watch = Control::WatchClaims { channel: feed, add: vec![fed.clone()], remove: vec![], at_least: 0 };
    edge.send(LinkFrame::Control(watch)).await;
    assert_eq!(next_claims(&mut edge, feed, &mut seq).await, vec![(fed.clone(), None)], "not claimed yet");
    assert_eq!(origin_metric(&c, 1, "raftcast_link_claim_feeds").await, 1.0);

    // Claimed: the claim and its owner's media address, as soon as origin 1 applies it.
    let Response::Claimed(claimed) = claim(&c, &fed, "edge-1", false).await else { panic!("claimed") };
    let claims = next_claims(&mut edge, feed, &mut seq).await;
    let (name, Some(got)) = &claims[0] else { panic!("{claims:?}") };
    assert_eq!(name, &fed);
    assert_eq!((got.claim.epoch, got.claim.owner), (claimed.epoch, claimed.owner));
    assert_eq!(got.media, Some(c.origins[&claimed.owner].media.to_string()));

    // A stream nobody follows here says nothing; the followed one's release does.
    assert!(matches!(claim(&c, &other, "edge-1", false).await, Response::Claimed(_)));
    let release = raftcast_raft::Command::ReleaseStream { stream: fed.clone(), epoch: claimed.epoch };
    let req = Forward::Write(raftcast_raft::Request { id: RequestId::random(), at_ms: 0, command: release });
    assert!(matches!(forward(&c, &req).await, ForwardReply::Written(Response::Released)));
    assert_eq!(next_claims(&mut edge, feed, &mut seq).await, vec![(fed.clone(), None)], "released");

    // Following `other` now answers its current claim at once.
    let watch = Control::WatchClaims { channel: feed, add: vec![other.clone()], remove: vec![fed], at_least: 0 };
    edge.send(LinkFrame::Control(watch)).await;
    let claims = next_claims(&mut edge, feed, &mut seq).await;
    assert!(matches!(&claims[..], [(name, Some(_))] if name == &other), "{claims:?}");

    // Abandoned: the origin drops the feed (and stops its heartbeats).
    edge.send(LinkFrame::Control(Control::UnwatchClaims { channel: feed })).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while origin_metric(&c, 1, "raftcast_link_claim_feeds").await != 0.0 {
        assert!(std::time::Instant::now() < deadline, "the feed outlived UnwatchClaims");
        // The link stays up (an origin closes a link silent for 2 s, which would end
        // the feed anyway).
        edge.send(LinkFrame::Control(Control::Ping { seq: 1 })).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `RetainWindow` for `channel` within `within` (pinging meanwhile), or `None`.
async fn retain_window(edge: &mut FakeEdge, within: Duration) -> Option<bool> {
    match tokio::time::timeout(within, edge.control_keepalive()).await {
        Ok(Control::RetainWindow { channel: ChannelId(1), keep }) => Some(keep),
        Ok(other) => panic!("unexpected control frame {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_tells_the_publishing_edge_to_keep_the_hls_window_only_while_hls_is_packaged() {
    let c = Cluster::start(1).await;
    let stream = StreamKey::new("live", "window").unwrap();
    let Response::Claimed(StreamClaim { owner, epoch, .. }) = claim(&c, &stream, "edge-1", false).await else {
        panic!("claim refused")
    };
    let media = c.origins[&owner].media;
    let (mut publisher, _) = FakeEdge::connect_as(media, &c.secret, "edge-1").await;
    publisher.send(LinkFrame::Control(Control::Publish { channel: ChannelId(1), stream: stream.clone(), epoch })).await;
    assert_eq!(publisher.control().await, Control::PublishAccepted { channel: ChannelId(1) });
    let accepted = std::time::Instant::now();

    // Nobody packages it: after the grace, the edge may let the window go.
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(10)).await, Some(false));
    let told = accepted.elapsed();
    assert!(told >= Duration::from_millis(4900), "told after {told:?}, within the grace");

    // An edge starting the stream for HLS (`SubscribeWindow`): wanted, at once.
    let (mut hls_edge, _) = FakeEdge::connect_as(media, &c.secret, "edge-2").await;
    hls_edge.send(LinkFrame::Control(Control::SubscribeWindow { channel: ChannelId(7), stream: stream.clone() })).await;
    assert_eq!(hls_edge.control().await, Control::Subscribed { channel: ChannelId(7) });
    let asked = std::time::Instant::now();
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(5)).await, Some(true));
    assert!(asked.elapsed() < Duration::from_secs(1), "told after {:?}", asked.elapsed());

    // It stops packaging: let go at the next look (every 2 s).
    hls_edge.send(LinkFrame::Control(Control::HlsInterest { channel: ChannelId(7), packaging: false })).await;
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(5)).await, Some(false));

    // A plain subscription changes nothing until it says it feeds HLS.
    hls_edge.send(LinkFrame::Control(Control::Subscribe { channel: ChannelId(8), stream: stream.clone() })).await;
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(3)).await, None);
    hls_edge.send(LinkFrame::Control(Control::HlsInterest { channel: ChannelId(8), packaging: true })).await;
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(1)).await, Some(true));
    // Its edge unsubscribes: not wanted.
    hls_edge.send(LinkFrame::Control(Control::Unsubscribe { channel: ChannelId(8) })).await;
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(5)).await, Some(false));

    // An older edge never says what feeds HLS: any subscription of its counts.
    let (mut old_edge, _) = FakeEdge::connect_speaking(media, &c.secret, "edge-3", OLDEST_PROTOCOL).await;
    old_edge.send(LinkFrame::Control(Control::Subscribe { channel: ChannelId(9), stream: stream.clone() })).await;
    assert_eq!(old_edge.control().await, Control::Subscribed { channel: ChannelId(9) });
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(1)).await, Some(true));
    drop(old_edge);
    assert_eq!(retain_window(&mut publisher, Duration::from_secs(8)).await, Some(false));

    // And an older publishing edge, which keeps the window always, is never told.
    publisher.send(LinkFrame::Control(Control::Unpublish { channel: ChannelId(1) })).await;
    let (mut old_publisher, _) = FakeEdge::connect_speaking(media, &c.secret, "edge-1", OLDEST_PROTOCOL).await;
    let publish = Control::Publish { channel: ChannelId(1), stream: stream.clone(), epoch };
    old_publisher.send(LinkFrame::Control(publish)).await;
    assert!(matches!(
        old_publisher.control().await,
        Control::PublishAccepted { .. } | Control::PublishAcceptedAt { .. }
    ));
    assert_eq!(retain_window(&mut old_publisher, Duration::from_secs(7)).await, None);
}
